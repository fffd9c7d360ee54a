"""Outlier detection for one cluster: passive ejection of endpoints that keep failing (Envoy's consecutive 5xx).

Owns the meaning of a cluster's `outlier_detection` (anchors 2.3): which endpoints are ejected, for how
long, and how many at once. Requests report each attempt's verdict with `record()` (O(1): a counter);
the owner calls `evaluate(now)` every `interval` on a timer, and only `evaluate` ejects or re-admits
(the user contract: "counts on the request path and decides ejections on its timer"; Envoy ejects consecutive-5xx
hosts inline instead, which would put the ejection bookkeeping on the request path).

Semantics, and where they follow or depart from Envoy:
- Failure: whatever the caller's one classifier calls a failure for outlier purposes (a 5xx response, a
  connect failure, a reset or a timeout; the user contract), as Envoy maps local-origin errors to 5xx when
  `split_external_local_origin_errors` is false. A success resets the endpoint's consecutive count.
  Injected faults and clients that go away must not be recorded at all.
- Ejection: at an evaluation, an endpoint with `consecutive_5xx` or more consecutive failures is ejected
  for `base_ejection_time x multiplier`, where the multiplier counts its ejections (1 on the first). The
  duration is capped at `max_ejection_time`: Envoy's default 300 s, or `base_ejection_time` if that is
  larger. As in Envoy, the multiplier only grows while `base x multiplier` is below the cap, so it does
  not climb without bound and decays back in a bounded number of intervals. The consecutive count is
  reset on ejection, so a re-admitted endpoint needs a fresh run of failures to go out again.
- At most `max_ejection_percent` of the endpoints are ejected at once, rounded down, but at least one
  when the percentage is above zero (so the default 10 % still protects a cluster of 3; Envoy's
  `always_eject_one_host` idea); 0 % never ejects (counting only, a shadow mode). A candidate refused for
  lack of room keeps its count and is tried again at the next evaluation (Envoy drops it and counts an
  `ejections_overflow`; we count too). Candidates with the longest failure run go first.
- Re-admission: an ejected endpoint returns at the first evaluation at or after its ejection ends, with
  its consecutive count reset.
- Decay: an endpoint that stays un-ejected has its multiplier lowered by one per full `interval` since
  it was re-admitted (Envoy: decremented at each sweep once healthy for an interval). We time the steps
  from the re-admission rather than counting sweeps, so an owner calling `evaluate` more often than every
  `interval` does not speed the decay up.
- Endpoint set changes (`set_endpoints`): kept endpoints keep their state; new ones start clean; removed
  ones are forgotten (their ejection no longer counts against the percentage).

Must not: use asyncio, read a clock (every time is a `now` argument from the owner's injected Clock),
pick endpoints, or know pools and metrics. Keys are endpoint addresses ("host:port").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.config.model import OutlierDetectionConfig

# Envoy's OutlierDetection.max_ejection_time default.
DEFAULT_MAX_EJECTION_TIME = 300.0


@dataclass(frozen=True, slots=True)
class OutlierChange:
    """One ejection or re-admission decided by `evaluate`. `duration` is the ejection's length (0 on return)."""

    endpoint: str
    ejected: bool
    duration: float = 0.0


class _EndpointState:
    __slots__ = ("consecutive", "decay_from", "ejected_at", "ejection_duration", "multiplier")

    def __init__(self) -> None:
        self.consecutive = 0
        # Ejected iff ejected_at is not None.
        self.ejected_at: float | None = None
        self.ejection_duration = 0.0
        self.multiplier = 0
        # Re-admission time, moved on by one interval per decay step; None while ejected or never ejected.
        self.decay_from: float | None = None


class OutlierDetector:
    """Consecutive-failure outlier detection for one cluster's endpoints (per worker)."""

    __slots__ = ("_base", "_ejected", "_max_percent", "_max_time", "_states", "_threshold", "ejections_overflow",
                 "ejections_total", "interval")

    def __init__(self, consecutive_5xx: int, interval: float, base_ejection_time: float,
                 max_ejection_percent: float, max_ejection_time: float = DEFAULT_MAX_EJECTION_TIME) -> None:
        if consecutive_5xx < 1:
            raise ValueError(f"consecutive_5xx must be at least 1 (got {consecutive_5xx})")
        if interval <= 0:
            raise ValueError(f"interval must be positive (got {interval})")
        if base_ejection_time < 0:
            raise ValueError(f"base_ejection_time cannot be negative (got {base_ejection_time})")
        if not 0 <= max_ejection_percent <= 100:
            raise ValueError(f"max_ejection_percent must be 0 to 100 (got {max_ejection_percent})")
        self._threshold = consecutive_5xx
        self.interval = interval
        self._base = base_ejection_time
        self._max_percent = max_ejection_percent
        # Envoy: "max_ejection_time ... defaults to 300s, or base_ejection_time if that is larger".
        self._max_time = max(max_ejection_time, base_ejection_time)
        self._states: dict[str, _EndpointState] = {}
        self._ejected: set[str] = set()
        self.ejections_total = 0
        self.ejections_overflow = 0

    @classmethod
    def from_config(cls, config: OutlierDetectionConfig, endpoints: Iterable[str] = ()) -> OutlierDetector:
        detector = cls(config.consecutive_5xx, config.interval, config.base_ejection_time,
                       config.max_ejection_percent)
        detector.set_endpoints(endpoints)
        return detector

    # -- request path -------------------------------------------------------------------------------

    def record(self, endpoint_key: str, failure_5xx: bool) -> None:
        """One attempt's verdict for an endpoint. Unknown endpoints (just removed) are ignored."""
        state = self._states.get(endpoint_key)
        if state is None:
            return
        if failure_5xx:
            state.consecutive += 1
        else:
            state.consecutive = 0

    def is_ejected(self, endpoint_key: str) -> bool:
        return endpoint_key in self._ejected

    @property
    def ejected(self) -> frozenset[str]:
        """The endpoints ejected now (a copy, for rebuilding a picker after `evaluate`)."""
        return frozenset(self._ejected)

    # -- control path -------------------------------------------------------------------------------

    def max_ejected(self) -> int:
        """How many of the current endpoints may be ejected at once."""
        if self._max_percent <= 0 or not self._states:
            return 0
        # The epsilon keeps a product that float rounding puts just below an integer from losing one.
        return max(1, int(len(self._states) * self._max_percent / 100.0 + 1e-9))

    def evaluate(self, now: float) -> list[OutlierChange]:
        """Run one detection sweep at time `now`: re-admit, decay multipliers, eject. Returns what changed."""
        changes: list[OutlierChange] = []
        candidates: list[tuple[int, int, str]] = []
        threshold = self._threshold
        interval = self.interval
        for order, (key, state) in enumerate(self._states.items()):
            ejected_at = state.ejected_at
            if ejected_at is not None:
                if now - ejected_at >= state.ejection_duration:
                    state.ejected_at = None
                    state.decay_from = now
                    state.consecutive = 0
                    self._ejected.discard(key)
                    changes.append(OutlierChange(key, False))
                continue
            decay_from = state.decay_from
            while decay_from is not None and now - decay_from >= interval:
                # One step per full healthy interval, catching up if this sweep ran late.
                state.multiplier -= 1
                decay_from = decay_from + interval if state.multiplier > 0 else None
                state.decay_from = decay_from
            if state.consecutive >= threshold:
                # Longest failure run first; config order breaks ties (stable, deterministic).
                candidates.append((-state.consecutive, order, key))
        if candidates:
            room = self.max_ejected() - len(self._ejected)
            candidates.sort()
            for index, (_, _, key) in enumerate(candidates):
                if index >= room:
                    self.ejections_overflow += len(candidates) - index
                    break
                changes.append(self._eject(key, now))
        return changes

    def _eject(self, key: str, now: float) -> OutlierChange:
        state = self._states[key]
        # Grow the multiplier only while the ejection is still below the cap (Envoy's rule), so it stays
        # bounded and decays back within a bounded number of healthy intervals.
        if state.multiplier * self._base < self._max_time:
            state.multiplier += 1
        duration = min(self._base * state.multiplier, self._max_time)
        state.ejected_at = now
        state.decay_from = None
        state.ejection_duration = duration
        state.consecutive = 0
        self._ejected.add(key)
        self.ejections_total += 1
        return OutlierChange(key, True, duration)

    def set_endpoints(self, keys: Iterable[str]) -> None:
        """A new endpoint set: kept endpoints keep their counts and ejections; new ones start clean."""
        old = self._states
        states: dict[str, _EndpointState] = {}
        for key in keys:
            if key not in states:
                state = old.get(key)
                states[key] = state if state is not None else _EndpointState()
        self._states = states
        self._ejected = {key for key in self._ejected if key in states}

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per endpoint, what /clusters shows: ejected, consecutive failures, ejection multiplier and length."""
        return {
            key: {
                "ejected": state.ejected_at is not None,
                "consecutive_5xx": state.consecutive,
                "times_ejected": state.multiplier,
                "ejection_seconds": state.ejection_duration if state.ejected_at is not None else 0.0,
            }
            for key, state in self._states.items()
        }
