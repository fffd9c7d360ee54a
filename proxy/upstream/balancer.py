"""Load balancers: the order in which a cluster offers its endpoints.

Owns the picking policies (round robin today; least request, peak EWMA and ring hash plug in here with
the same shape). A balancer is rebuilt whole when the endpoint set changes (snapshots, not locks); the
cluster skips endpoints that are ejected, refused by their breaker, or already tried. Must not do I/O.
"""

from __future__ import annotations


class RoundRobin:
    """Each endpoint in turn."""

    __slots__ = ("_count", "_next")

    def __init__(self, count: int) -> None:
        self._count = count
        self._next = 0

    def start(self) -> int:
        """The index to try first for this pick; the next pick starts one further."""
        index = self._next
        self._next = index + 1 if index + 1 < self._count else 0
        return index
