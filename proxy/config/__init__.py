"""Configuration: YAML -> frozen, validated model; every error with file, line and key path."""
