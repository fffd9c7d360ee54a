"""Load balancers: pick an endpoint from an immutable endpoint set.

Owns the picking policies (round robin today; least request, peak EWMA and ring hash plug in here with
the same `pick(exclude)` shape). A balancer is rebuilt whole when the endpoint set changes (snapshots,
not locks). Must not do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.upstream.endpoint import Endpoint


class RoundRobin:
    """Each endpoint in turn; a retry skips endpoints already tried when another is available."""

    __slots__ = ("_count", "_endpoints", "_next")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)
        self._count = len(self._endpoints)
        self._next = 0

    def pick(self, exclude: frozenset[Endpoint] | None = None) -> Endpoint | None:
        count = self._count
        if count == 0:
            return None
        start = self._next
        self._next = (start + 1) % count
        endpoints = self._endpoints
        if not exclude:
            return endpoints[start]
        for offset in range(count):
            candidate = endpoints[(start + offset) % count]
            if candidate not in exclude:
                self._next = (start + offset + 1) % count
                return candidate
        return endpoints[start]
