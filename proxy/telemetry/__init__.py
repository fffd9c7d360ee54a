"""Telemetry: metric families, their exposition, and merging workers' expositions."""
