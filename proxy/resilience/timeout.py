"""Request deadlines on one event-loop timer: `DeadlineTimers.call_at` is `loop.call_at` for many short-lived
deadlines that are nearly always cancelled before they fire (route and per-try timeouts).

Owns the timing wheel: deadlines fall into buckets of `resolution` seconds, a bucket is a dict (O(1) add and
cancel), and the loop timer is armed only for the earliest bucket. A deadline fires at or after its time,
at most one `resolution` late (10 ms by default: Envoy's timeouts are milliseconds too), never early.

Why not a `loop.call_at` per deadline: with uvloop each one makes a TimerHandle and a libuv timer and
cancels it again, about 5,700 instructions, twice per request with a per-try timeout; a deadline here is an
object and two dict operations (docs/decisions/0008). Must not know what expires (the callback does).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Generic, TypeVar

_A = TypeVar("_A")
_B = TypeVar("_B")

DEFAULT_RESOLUTION = 0.01


class Deadline(Generic[_A, _B]):
    """One scheduled `callback(first, second)`; `cancel()` before it fires and it never does."""

    __slots__ = ("_bucket", "callback", "first", "second")

    def __init__(self, bucket: dict[Deadline[_A, _B], None], callback: Callable[[_A, _B], None], first: _A,
                 second: _B) -> None:
        self._bucket = bucket
        self.callback = callback
        self.first = first
        self.second = second

    def cancel(self) -> None:
        self._bucket.pop(self, None)


class DeadlineTimers(Generic[_A, _B]):
    """Deadlines of one event loop, grouped in buckets of `resolution` seconds behind one loop timer."""

    __slots__ = ("_armed_tick", "_buckets", "_loop", "_resolution", "_ticks", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = DEFAULT_RESOLUTION) -> None:
        if resolution <= 0:
            raise ValueError(f"deadline resolution must be positive, got {resolution}")
        self._loop = loop
        self._resolution = resolution
        # tick -> the deadlines due by `tick * resolution` (a dict as an insertion-ordered set).
        self._buckets: dict[int, dict[Deadline[_A, _B], None]] = {}
        # The ticks of the buckets above, as a heap: the earliest is the one the loop timer is armed for.
        self._ticks: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed_tick = 0

    def call_at(self, when: float, callback: Callable[[_A, _B], None], first: _A, second: _B) -> Deadline[_A, _B]:
        """Run `callback(first, second)` at loop time `when` or up to one resolution later."""
        # ceil: the bucket's time is never before `when`, so nothing fires early.
        tick = math.ceil(when / self._resolution)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if self._timer is None or tick < self._armed_tick:
                self._arm(tick)
        deadline = Deadline(bucket, callback, first, second)
        bucket[deadline] = None
        return deadline

    def __len__(self) -> int:
        """Deadlines scheduled and not yet fired or cancelled."""
        return sum(len(bucket) for bucket in self._buckets.values())

    def close(self) -> None:
        """Drop every deadline and the loop timer (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._ticks.clear()

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_tick = tick
        self._timer = self._loop.call_at(tick * self._resolution, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        ticks = self._ticks
        while ticks and ticks[0] * self._resolution <= now:
            bucket = self._buckets.pop(heapq.heappop(ticks))
            # A callback may cancel another deadline of this bucket: iterate over a copy.
            for deadline in list(bucket):
                if deadline in bucket:
                    deadline.callback(deadline.first, deadline.second)
            bucket.clear()
        if ticks:
            # Also when the loop timer fired a little early (its clock is milliseconds): re-armed, not fired.
            self._arm(ticks[0])
