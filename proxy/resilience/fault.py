"""Fault injection for a route (Istio's VirtualService `fault`, anchors 2.12): delay and/or abort a share of requests.

Owns the draw: for each request, independently, a delay of `delay.fixed` seconds with probability
`delay.percent` / 100 and an abort with `abort.status` with probability `abort.percent` / 100. When both
hit, the caller waits the delay first, then aborts (Envoy's fault filter order). The caller answers an
abort with the `proxy_internal_response` local reply (details: fault injected), and must neither retry
faulted requests nor report them to breakers or outlier detection (the user contract).

Must not: sleep, build replies, or own randomness (the `random.Random` is injected: the worker's `Clock.random`
in production, a seeded one in tests). Decisions are four shared immutable values made at compile time, so
`decide()` allocates nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from proxy.config.model import FaultConfig


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to inject into one request: wait `delay` seconds (0.0 = none), then answer `abort` (None = don't)."""

    delay: float = 0.0
    abort: int | None = None

    @property
    def injected(self) -> bool:
        return self.delay > 0.0 or self.abort is not None


NO_FAULT = FaultDecision()


class FaultInjector:
    """A route's compiled fault: probabilities as fractions, and the four possible decisions prebuilt."""

    __slots__ = ("_abort_only", "_abort_p", "_both", "_delay_only", "_delay_p", "_rng")

    def __init__(self, delay: float, delay_percent: float, abort_status: int | None, abort_percent: float,
                 rng: random.Random) -> None:
        if delay < 0:
            raise ValueError(f"delay cannot be negative (got {delay})")
        if not 0 <= delay_percent <= 100 or not 0 <= abort_percent <= 100:
            raise ValueError("fault percentages must be 0 to 100")
        if abort_status is None:
            abort_percent = 0.0
        if delay == 0:
            # A zero delay injects nothing, so it is not drawn for (and `decide` never returns delay=0 as a hit).
            delay_percent = 0.0
        self._delay_p = delay_percent / 100.0
        self._abort_p = abort_percent / 100.0
        self._rng = rng
        self._delay_only = FaultDecision(delay=delay)
        self._abort_only = FaultDecision(abort=abort_status)
        self._both = FaultDecision(delay=delay, abort=abort_status)

    @classmethod
    def from_config(cls, fault: FaultConfig | None, rng: random.Random) -> FaultInjector | None:
        """None when the route injects nothing (no fault, or every percentage 0): the caller skips the stage."""
        if fault is None:
            return None
        delay = fault.delay.fixed if fault.delay is not None else 0.0
        delay_percent = fault.delay.percent if fault.delay is not None else 0.0
        abort_status = fault.abort.status if fault.abort is not None else None
        abort_percent = fault.abort.percent if fault.abort is not None else 0.0
        if (delay <= 0 or delay_percent <= 0) and (abort_status is None or abort_percent <= 0):
            return None
        return cls(delay, delay_percent, abort_status, abort_percent, rng)

    @property
    def delay_probability(self) -> float:
        return self._delay_p

    @property
    def abort_probability(self) -> float:
        return self._abort_p

    def decide(self) -> FaultDecision:
        """One request's fault. Two independent draws; a probability of 0 or 1 needs no draw."""
        delay_p = self._delay_p
        abort_p = self._abort_p
        # random() is in [0, 1): `< p` hits with probability p, always for p = 1, never for p = 0.
        delayed = delay_p >= 1.0 or (delay_p > 0.0 and self._rng.random() < delay_p)
        aborted = abort_p >= 1.0 or (abort_p > 0.0 and self._rng.random() < abort_p)
        if delayed:
            return self._both if aborted else self._delay_only
        return self._abort_only if aborted else NO_FAULT
