"""The endpoint-set snapshot every discovery hands to its clusters: one `DiscoveredEndpoint` per address.

Owns the shape of what discovery knows about an endpoint beyond its address: the zone it runs in, the
zones Kubernetes' topology hints assign it to, whether it is terminating (serving, but to take no new
requests), its weight and the Pod behind it. Static and DNS discovery know only the address; Kubernetes
discovery fills the rest. A snapshot is an immutable tuple, delivered whole. Must not do I/O.
"""

from __future__ import annotations

from typing import NamedTuple


class DiscoveredEndpoint(NamedTuple):
    """One endpoint of a snapshot."""

    host: str
    port: int
    # The endpoint's zone (EndpointSlice `endpoints[].zone`), when known.
    zone: str | None = None
    # Topology hints (`endpoints[].hints.forZones`): the zones whose clients should use this endpoint.
    for_zones: tuple[str, ...] = ()
    # Serving but terminating (conditions.terminating): no new requests; requests in flight finish.
    terminating: bool = False
    # Relative share for balancers that weigh endpoints.
    weight: int = 1
    # The Pod behind the endpoint (targetRef), shown in /clusters.
    pod: str | None = None


EndpointSet = tuple[DiscoveredEndpoint, ...]


def from_addresses(addresses: tuple[tuple[str, int], ...] | list[tuple[str, int]]) -> EndpointSet:
    """A snapshot of bare addresses (static and DNS discovery)."""
    return tuple(DiscoveredEndpoint(host, port) for host, port in addresses)
