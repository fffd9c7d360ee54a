"""Static discovery: a cluster's `endpoints:` list, delivered once as its endpoint set.

Owns turning configured endpoints (an address, with an optional weight and zone) into the snapshot a
cluster consumes. Hostnames are kept as names and resolved when connecting. Must not open connections.
"""

from __future__ import annotations

from proxy.config.model import StaticEndpointConfig
from proxy.discovery.snapshot import DiscoveredEndpoint, EndpointSet


def static_endpoints(endpoints: list[StaticEndpointConfig]) -> EndpointSet:
    """The endpoint set of a static cluster, in configured order."""
    return tuple(DiscoveredEndpoint(e.address.host, e.address.port, e.zone, weight=e.weight) for e in endpoints)
