"""A cluster at run time: a named endpoint set with one policy, compiled from its config once.

Owns the endpoint snapshot, the balancer built over it, and the per-cluster counters shown in
/clusters. Discovery replaces the endpoint set whole (`set_endpoints`); pools of endpoints that stay
are kept, pools of removed ones drain. Must not know routes.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.config.model import Cluster as ClusterConfig
from proxy.upstream.balancer import RoundRobin
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.pool import PoolSettings


class Cluster:
    """A named set of endpoints and the balancer that picks among them."""

    __slots__ = ("balancer", "config", "endpoints", "has_endpoints", "name", "pool_settings")

    def __init__(self, config: ClusterConfig) -> None:
        self.name = config.name
        self.config = config
        self.pool_settings = PoolSettings(
            connect_timeout=config.connect_timeout,
            max_idle=config.pool.max_idle_per_endpoint,
            idle_timeout=config.pool.idle_timeout,
            max_requests_per_connection=config.pool.max_requests_per_connection,
        )
        self.endpoints: tuple[Endpoint, ...] = ()
        self.balancer = RoundRobin(())
        # False until discovery delivered its first set (readiness waits for it).
        self.has_endpoints = False

    def set_endpoints(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Replace the endpoint set; endpoints that stay keep their pools, removed ones drain."""
        current = {(e.host, e.port): e for e in self.endpoints}
        fresh: list[Endpoint] = []
        for host, port in addresses:
            endpoint = current.pop((host, port), None)
            if endpoint is None:
                endpoint = Endpoint(self.name, host, port, self.pool_settings)
            fresh.append(endpoint)
        for removed in current.values():
            removed.pool.close()
        self.endpoints = tuple(fresh)
        self.balancer = RoundRobin(self.endpoints)
        self.has_endpoints = True

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.pool.close()

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows for this cluster."""
        return {
            "name": self.name,
            "load_balancer": "round_robin",
            "connect_timeout_seconds": self.pool_settings.connect_timeout,
            "endpoints": [e.snapshot() for e in self.endpoints],
        }
