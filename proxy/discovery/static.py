"""Static discovery: a cluster's `endpoints:` list, delivered once as its endpoint set.

Owns turning configured addresses into the (host, port) snapshot a cluster consumes. Hostnames are
kept as names and resolved when connecting. Must not open connections.
"""

from __future__ import annotations

from proxy.config.model import Address


def static_endpoints(addresses: list[Address]) -> list[tuple[str, int]]:
    """The endpoint set of a static cluster, in configured order."""
    return [(address.host, address.port) for address in addresses]
