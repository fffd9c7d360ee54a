"""One upstream endpoint (host:port) of a cluster: its pool and its live counters.

Owns the per-endpoint state the balancer and the admin view read (in-flight requests, totals).
The breaker and outlier state plug in here. Must not decide routing or retries.
"""

from __future__ import annotations

from proxy.upstream.pool import Pool, PoolSettings


class Endpoint:
    """A member of a cluster's endpoint set."""

    __slots__ = ("address", "failures", "host", "in_flight", "pool", "port", "requests")

    def __init__(self, cluster: str, host: str, port: int, pool_settings: PoolSettings) -> None:
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.pool = Pool(host, port, pool_settings, f"cluster {cluster}: endpoint {self.address}")
        self.in_flight = 0
        self.requests = 0
        self.failures = 0

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows for this endpoint."""
        return {
            "address": self.address,
            "health": "healthy",
            "breaker": "closed",
            "ejected": False,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "idle_connections": self.pool.idle_count,
            "open_connections": self.pool.open_count,
        }
