"""horizon-sidecar: a service-mesh sidecar proxy (HTTP/1.1 data plane on uvloop + httptools)."""

__version__ = "0.1.0"
