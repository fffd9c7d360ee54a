"""Request deadlines on one clock timer: `DeadlineTimers.call_at` is `Clock.call_at` for many short-lived
deadlines that are nearly always cancelled before they fire (route and per-try timeouts).

Owns the timing wheel: deadlines fall into buckets of `resolution` seconds, a bucket is a dict (O(1) add and
cancel, dropped when its last deadline is cancelled), and one timer of the injected `Clock` is armed only for
the earliest bucket. A deadline fires at or after its time, at most one `resolution` late (10 ms by default:
Envoy's timeouts are milliseconds too), never early; deadlines of one bucket fire in time order. Times are
the clock's (`Clock.now()`): the real clock's are the event loop's, a `ManualClock`'s are virtual, so the
timeouts of the request path can be tested without sleeping.

Why not a timer per deadline: with uvloop each `loop.call_at` makes a TimerHandle and a libuv timer and
cancels it again, about 5,700 instructions, twice per request with a per-try timeout; a deadline here is an
object and two dict operations (docs/decisions/0008). Must not know what expires (the callback does).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from proxy.clock import Clock, Timer

_A = TypeVar("_A")
_B = TypeVar("_B")

log = logging.getLogger("proxy.resilience.timeout")

DEFAULT_RESOLUTION = 0.01
# uvloop's clock (so the real `Clock`'s) counts whole milliseconds, and `tick * resolution` can land a float
# step above the millisecond the timer fires at: a bucket is due when `now` is within this many ticks of its time.
_TICK_SLACK = 1e-6
# The heap of ticks is rebuilt from the live buckets once it holds this many more entries than twice
# their number (ticks of buckets emptied by cancels stay in the heap until then).
_COMPACT_SLACK = 64


class Deadline(Generic[_A, _B]):
    """One scheduled `callback(first, second)`; `cancel()` before it fires and it never does."""

    __slots__ = ("_tick", "_timers", "callback", "first", "second", "when")

    def __init__(self, timers: DeadlineTimers[_A, _B] | None, tick: int, when: float,
                 callback: Callable[[_A, _B], None], first: _A, second: _B) -> None:
        self._timers = timers
        self._tick = tick
        self.when = when
        self.callback = callback
        self.first = first
        self.second = second

    def cancel(self) -> None:
        timers = self._timers
        if timers is not None:
            self._timers = None
            timers._forget(self)


class DeadlineTimers(Generic[_A, _B]):
    """Deadlines of one clock, grouped in buckets of `resolution` seconds behind one clock timer."""

    __slots__ = ("_armed_tick", "_buckets", "_clock", "_resolution", "_ticks", "_timer")

    def __init__(self, clock: Clock, resolution: float = DEFAULT_RESOLUTION) -> None:
        if resolution <= 0:
            raise ValueError(f"deadline resolution must be positive, got {resolution}")
        self._clock = clock
        self._resolution = resolution
        # tick -> the deadlines due by `tick * resolution` (a dict as an insertion-ordered set).
        self._buckets: dict[int, dict[Deadline[_A, _B], None]] = {}
        # The ticks of the buckets above, as a heap (and, until compaction, ticks of emptied buckets).
        self._ticks: list[int] = []
        self._timer: Timer | None = None
        self._armed_tick = 0

    def call_at(self, when: float, callback: Callable[[_A, _B], None], first: _A, second: _B) -> Deadline[_A, _B]:
        """Run `callback(first, second)` at clock time `when` or up to one resolution later."""
        if not math.isfinite(when):
            return Deadline(None, 0, when, callback, first, second)  # never: nothing to schedule
        # ceil: the bucket's time is never before `when`, so nothing fires early.
        tick = math.ceil(when / self._resolution)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if self._timer is None or tick < self._armed_tick:
                self._arm(tick)
        deadline = Deadline(self, tick, when, callback, first, second)
        bucket[deadline] = None
        return deadline

    def __len__(self) -> int:
        """Deadlines scheduled and not yet fired or cancelled."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def close(self) -> None:
        """Drop every deadline and the clock timer (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._ticks.clear()

    def _forget(self, deadline: Deadline[_A, _B]) -> None:
        bucket = self._buckets.get(deadline._tick)
        if bucket is None:
            return
        bucket.pop(deadline, None)
        if not bucket:
            # A cancelled bucket holds no memory until its time (a route timeout of an hour would keep an
            # hour of them); its tick leaves the heap at the next compaction.
            del self._buckets[deadline._tick]
            if len(self._ticks) > 2 * len(self._buckets) + _COMPACT_SLACK:
                self._ticks = sorted(self._buckets)  # a sorted list is a heap

    def _arm(self, tick: int, not_before: float = 0.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_tick = tick
        self._timer = self._clock.call_at(max(tick * self._resolution, not_before), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._clock.now()
        due = math.floor(now / self._resolution + _TICK_SLACK)
        ticks = self._ticks
        buckets = self._buckets
        while ticks and ticks[0] <= due:
            bucket = buckets.pop(heapq.heappop(ticks), None)
            if not bucket:
                continue  # emptied by cancels
            # In time order; a callback may cancel another deadline of this bucket, which then does not run.
            for deadline in sorted(bucket, key=_when):
                if deadline._timers is None:
                    continue
                deadline._timers = None
                try:
                    deadline.callback(deadline.first, deadline.second)
                except Exception:
                    log.exception("deadline callback failed")
        while ticks and ticks[0] not in buckets:
            heapq.heappop(ticks)  # emptied by cancels: no wake-up for them
        if ticks:
            # A timer that fired before the bucket's time (a resolution that is no whole number of the loop
            # clock's milliseconds) waits a millisecond more rather than spinning on a zero delay.
            self._arm(ticks[0], now + 0.001)


def _when(deadline: Deadline[Any, Any]) -> float:
    return deadline.when
