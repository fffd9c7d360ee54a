"""Telemetry: metric families, trace context, access logs."""
