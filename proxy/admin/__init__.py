"""Admin server (on the sidecar's own HTTP/1.1 codec): health, readiness, metrics, config and cluster
dumps, shutdown, log level."""
