"""Load balancers: which endpoint of a cluster takes an attempt.

Owns the `Balancer` interface and its implementations (round robin today; least request, peak EWMA, ring
hash and weighted round robin implement the same interface), and `pick_from`, the rules every balancer
keeps when it offers endpoints:
- a balancer is built over an immutable endpoint snapshot and rebuilt whole when the set changes
  (`rebuild`), so a pick never takes a lock or sees a half-updated set;
- `pick(tried, hash_key)` runs per attempt with the request's context: the endpoints this request already
  tried, and a hash key (the 64-bit hash a route's hash policy computed, or None; only hashing balancers
  read it). It skips endpoints that are draining or ejected, prefers untried ones, and asks the
  breaker (`Endpoint.admit()`, which takes a half-open trial slot when it says yes) only of the endpoint it
  has chosen, moving on when the breaker refuses; when no untried endpoint admits, the first tried one in
  the balancer's order may take the attempt (a retry on the same endpoint beats no retry). It returns the
  endpoint with its breaker token, or None when no endpoint may take the attempt;
- `observe(endpoint, verdict, latency)` is told every attempt's outcome and latency (seconds from sending
  to the verdict), which is what latency-aware balancers learn from.
State a balancer learns per endpoint and must keep across snapshots belongs on the `Endpoint` (which
outlives set changes that keep it, as `in_flight` does), not in the balancer.

Hot path: `pick` runs per attempt and is compiled with mypyc; balancers are plain slotted native classes
(the cluster's calls dispatch through a vtable, not a Python method lookup as a Protocol's would), and a
pick allocates nothing but its result. The price: in the compiled build no interpreted class can subclass
`Balancer`, so every balancer lives here. Must not do I/O.
"""

from __future__ import annotations

from proxy.resilience.classify import Verdict
from proxy.upstream.endpoint import ACTIVE, Endpoint


class Balancer:
    """The picking policy of a cluster over one endpoint snapshot. Subclasses implement `pick` and `rebuild`."""

    __slots__ = ("endpoints",)

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints = endpoints

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> Balancer:
        """A balancer of the same kind and settings over a new endpoint snapshot (this one is left as is)."""
        raise NotImplementedError

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None) -> tuple[Endpoint, int] | None:
        """An endpoint for this attempt and its breaker token, or None (see the module docstring's rules)."""
        raise NotImplementedError

    def observe(self, endpoint: Endpoint, verdict: Verdict, latency: float) -> None:
        """An attempt on `endpoint` ended with `verdict` after `latency` seconds (`verdict.cancelled`: the
        client left). May name an endpoint this snapshot no longer holds. Round robin learns nothing."""


class RoundRobin(Balancer):
    """Each endpoint in turn: every pick starts one endpoint further than the last."""

    __slots__ = ("_next",)

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        super().__init__(endpoints)
        self._next = 0

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> RoundRobin:
        return RoundRobin(endpoints)

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None) -> tuple[Endpoint, int] | None:
        endpoints = self.endpoints
        count = len(endpoints)
        if count == 0:
            return None
        start = self._next
        self._next = start + 1 if start + 1 < count else 0
        return pick_from(endpoints, start, tried)


def pick_from(endpoints: tuple[Endpoint, ...], start: int, tried: list[Endpoint] | None) -> tuple[Endpoint, int] | None:
    """Walk `endpoints` from index `start` (wrapping once round), the caller's order of preference: the first
    active, non-ejected, untried endpoint whose breaker admits, else the first tried one if its breaker
    admits; None when neither. A breaker that refuses gives nothing away, and the first to admit is the pick:
    only the chosen endpoint's half-open trial slot is ever taken."""
    count = len(endpoints)
    fallback: Endpoint | None = None
    for offset in range(count):
        index = start + offset
        endpoint = endpoints[index if index < count else index - count]
        if endpoint.ejected or endpoint.state is not ACTIVE:
            continue
        if tried and endpoint in tried:
            if fallback is None:
                fallback = endpoint
            continue
        token = endpoint.admit()
        if token is not None:
            return endpoint, token
    if fallback is not None:
        token = fallback.admit()
        if token is not None:
            return fallback, token
    return None
