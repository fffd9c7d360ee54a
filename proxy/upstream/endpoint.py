"""One upstream endpoint (host:port) of a cluster: its pool, its breaker and its live counters.

Owns the per-endpoint state the balancer and the admin view read: its `weight`, `zone` and `state` (ACTIVE;
TERMINATING while Kubernetes reports it terminating, UNHEALTHY while active health checks fail it,
DRAINING once discovery removed it: none of these takes new attempts, attempts in flight finish), in-flight
requests, totals,
the circuit breaker (gobreaker semantics, `proxy.resilience.breaker`) and the outlier-ejection flag set by
the cluster's outlier timer. `admit()` and `report()` are the request path's two calls; `available()`
asks, without admitting, whether a retry could go here. An endpoint outlives endpoint-set changes that
keep it, so state a balancer learns per endpoint and must keep across them belongs here. Must not decide
routing or retries.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from proxy.clock import Clock
from proxy.config.model import host_port
from proxy.resilience.breaker import BreakerState, CircuitBreaker
from proxy.resilience.classify import Verdict
from proxy.upstream.pool import Pool, PoolSettings

# The token `admit()` returns when the endpoint has no breaker (any int: only breakers read it).
NO_BREAKER = 0


class EndpointState(enum.Enum):
    """Whether an endpoint takes new attempts (only ACTIVE ones do). `.value` is what /clusters shows."""

    # In the cluster's endpoint set and ready: balancers may pick it.
    ACTIVE = "ready"
    # Kubernetes reports it serving but terminating: no new attempts; attempts in flight finish.
    TERMINATING = "terminating"
    # Active health checks fail it: out of the balancer's snapshot until it passes again.
    UNHEALTHY = "unhealthy"
    # Removed from the set by discovery: attempts in flight finish, then its pool is gone.
    DRAINING = "draining"


# Module constants: a compiled comparison with them is a pointer compare, not an enum attribute lookup.
ACTIVE: Final = EndpointState.ACTIVE
TERMINATING: Final = EndpointState.TERMINATING
UNHEALTHY: Final = EndpointState.UNHEALTHY
DRAINING: Final = EndpointState.DRAINING


class Endpoint:
    """A member of a cluster's endpoint set."""

    __slots__ = (
        "address",
        "breaker",
        "ejected",
        "failures",
        "for_zones",
        "host",
        "in_flight",
        "on_result",
        "pod",
        "pool",
        "port",
        "ramp_window",
        "requests",
        "rtt",
        "rtt_at",
        "state",
        "terminating",
        "unhealthy",
        "warm_at",
        "weight",
        "zone",
    )

    def __init__(self, cluster: str, host: str, port: int, pool_settings: PoolSettings, clock: Clock,
                 weight: int = 1) -> None:
        if weight < 1:
            raise ValueError(f"endpoint weight must be at least 1 (got {weight})")
        self.host = host
        self.port = port
        self.address = host_port(host, port)
        # Relative share of picks for balancers that weigh endpoints (round robin ignores it).
        self.weight = weight
        self.state = ACTIVE
        # Where discovery says it runs (None: unknown) and the Pod behind it (Kubernetes discovery).
        self.zone: str | None = None
        self.pod: str | None = None
        # Topology hints: the zones whose clients should use this endpoint (empty: no hints).
        self.for_zones: tuple[str, ...] = ()
        # The two causes of a non-ACTIVE state that can clear again: discovery's terminating condition and
        # failing active health checks (`Cluster` derives `state` from them).
        self.terminating = False
        self.unhealthy = False
        self.pool = Pool(host, port, pool_settings, f"cluster {cluster}: endpoint {self.address}", clock)
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.breaker: CircuitBreaker | None = None
        # Set by the cluster's outlier timer: an ejected endpoint is skipped by the balancer.
        self.ejected = False
        # Peak EWMA's round-trip estimate (seconds; negative: no estimate yet) and the clock time it was
        # last decayed or updated at. Kept here so the estimate survives endpoint-set changes.
        self.rtt = -1.0
        self.rtt_at = 0.0
        # Slow start: the clock time the endpoint's weight ramp ends (0.0: not ramping) and the ramp's length.
        self.warm_at = 0.0
        self.ramp_window = 0.0
        # The cluster's hook for attempt results (outlier counting), bound once per endpoint.
        self.on_result: Callable[[Endpoint, Verdict], None] | None = None

    def admit(self) -> int | None:
        """May an attempt go here now? The breaker's generation token, or None when it refuses."""
        breaker = self.breaker
        if breaker is None:
            return NO_BREAKER
        return breaker.allow()

    def available(self) -> bool:
        """Could an attempt go here now (active, not ejected, breaker admitting)? Takes nothing from the
        breaker."""
        if self.ejected or self.state is not ACTIVE:
            return False
        breaker = self.breaker
        return breaker is None or breaker.would_allow()

    def report(self, token: int, verdict: Verdict) -> None:
        """The verdict of an attempt admitted with `token`: feeds the breaker and outlier detection."""
        if verdict.is_failure:
            self.failures += 1
        breaker = self.breaker
        if breaker is not None:
            if verdict.cancelled:
                breaker.cancel(token)
            else:
                breaker.record(token, verdict.is_failure)
        if self.on_result is not None and not verdict.cancelled:
            self.on_result(self, verdict)

    @property
    def breaker_state(self) -> str:
        return self.breaker.state.label if self.breaker is not None else BreakerState.CLOSED.label

    @property
    def status(self) -> str:
        """One word for /clusters: ready, terminating, unhealthy, draining, ejected or breaker_open."""
        if self.state is not ACTIVE:
            return str(self.state.value)
        if self.ejected:
            return "ejected"
        return "breaker_open" if self.breaker_state == "open" else "ready"

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows for this endpoint."""
        breaker = self.breaker_state
        view: dict[str, object] = {
            "address": self.address,
            "state": self.status,
            "zone": self.zone,
            "weight": self.weight,
            "health": ("unhealthy" if self.unhealthy else "ejected" if self.ejected
                       else "breaker_open" if breaker == "open" else "healthy"),
            "breaker": breaker,
            "ejected": self.ejected,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "idle_connections": self.pool.idle_count,
            "open_connections": self.pool.open_count,
            # Peak EWMA's round-trip estimate as last updated (null until a peak_ewma cluster measured one).
            "ewma_latency_ms": round(self.rtt * 1000.0, 3) if self.rtt >= 0.0 else None,
        }
        if self.pod is not None:
            view["pod"] = self.pod
        tls = self.pool.tls_snapshot()
        if tls is not None:
            view["tls"] = tls
        return view
