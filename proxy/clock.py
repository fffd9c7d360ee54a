"""Injected time, timers and randomness.

Owns the one `Clock` abstraction every policy core and timer uses: `now()`, `wall()`, `call_at(when,
callback, *args)` (a handle with `cancel()`), `async sleep(seconds)` and a seeded `random`. The real `Clock`
is the running event loop's clock: `now()` is `loop.time()` (so a deadline computed from `now()` and a
timer armed with `call_at` agree, millisecond resolution and all under uvloop), and its timers are the
loop's own. `ManualClock` is virtual time for tests: it keeps its own timer heap, and time moves only when
the test says (`advance`, `elapse`), while the code under test runs on a real asyncio loop.

Must not hold per-request state or import anything above the core layer; the real clock's methods stay a
call or two deep (the request path reads `now()` several times per request).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    """What `Clock.call_at` returns: `asyncio.TimerHandle` on the real clock, `ManualTimer` on a manual one."""

    def cancel(self) -> None: ...


class Clock:
    """The event loop's time and timers plus a seeded random source.

    Serves one event loop: the one given, else the one running when it is made, else the first it is
    asked to schedule on. Before any loop is bound, `now()` is `time.monotonic()`, the clock asyncio's own
    loop reads and uvloop's counts in whole milliseconds, so a time read before and one read after binding
    compare sensibly.
    """

    __slots__ = ("_loop", "_time", "_time_of", "random")

    def __init__(self, rng: random.Random | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.random = rng if rng is not None else random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        # `now()` is `self._time(self._time_of)`: the loop class's own `time` function called with the loop.
        # Compiled, that is one call straight into uvloop; `loop.time()` would first look the method up (or,
        # stored bound, go through the bound-method wrapper), ~70 instructions more a read, and the request
        # path reads the clock several times a request. No None check either: unbound, it reads monotonic.
        self._time: Callable[[Any], float] = _monotonic
        self._time_of: object = None
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # made outside a loop (a CLI path, a synchronous test): bound on first scheduling
        self._bind(loop)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._time = type(loop).time
        self._time_of = loop

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = asyncio.get_running_loop()  # scheduling needs a loop: RuntimeError outside one
            self._bind(loop)
        return loop

    def now(self) -> float:
        """Monotonic seconds: the loop's time, the base of every deadline and timer."""
        return self._time(self._time_of)

    def wall(self) -> float:
        """Wall-clock seconds since the epoch (for HTTP dates such as `Retry-After`)."""
        return time.time()

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Run `callback(*args)` once `now()` reaches `when` (on the loop's clock: never early)."""
        return self._running_loop().call_at(when, callback, *args)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualTimer:
    """A timer of a `ManualClock`: fires when virtual time reaches `when`, unless cancelled first."""

    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock(Clock):
    """A clock that only moves when told to: virtual time for unit tests.

    Its timers fire from `advance()` or `elapse()`, in time order (timers due at the same time in the order
    they were scheduled), with `now()` reading each timer's own time while its callback runs. `sleep()`
    resolves when virtual time passes its end. Callbacks run synchronously inside `advance()`; what they wake
    (a future's awaiter) runs when the loop next gets control, so a test that needs the woken code to run
    before later timers fire uses `await elapse(...)`.
    """

    __slots__ = ("_now", "_sequence", "_timers")

    def __init__(self, start: float = 1000.0, rng: random.Random | None = None) -> None:
        super().__init__(rng if rng is not None else random.Random(0))
        self._now = start
        # (when, sequence, timer): the sequence keeps scheduling order among timers due at the same time.
        self._timers: list[tuple[float, int, ManualTimer]] = []
        self._sequence = 0

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> ManualTimer:
        timer = ManualTimer(when, callback, args)
        self._sequence += 1
        heapq.heappush(self._timers, (when, self._sequence, timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # like asyncio.sleep(0): yield to the loop once, no timer
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_at(self._now + seconds, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    @property
    def pending(self) -> int:
        """Timers scheduled and neither fired nor cancelled."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def next_due(self) -> float | None:
        """When the earliest live timer is due, or None when none is scheduled."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, firing every timer due by then in time order (an exception from a
        callback propagates to the caller: a test should see it, not a log line)."""
        if seconds < 0:
            raise ValueError(f"virtual time cannot go back ({seconds})")
        target = self._now + seconds
        while self._fire_next(target):
            pass
        self._now = target

    async def elapse(self, seconds: float, settle: int = 10) -> None:
        """`advance(seconds)`, letting the loop run `settle` iterations after each time at which timers fire,
        so a sleeper or waiter a timer woke runs (and schedules its next timer) at that virtual time."""
        if seconds < 0:
            raise ValueError(f"virtual time cannot go back ({seconds})")
        target = self._now + seconds
        await _yield(settle)
        while True:
            due = self.next_due()
            if due is None or due > target:
                break
            while self._fire_next(due):
                pass
            await _yield(settle)
        self._now = target
        await _yield(settle)

    def _fire_next(self, until: float) -> bool:
        """Fire the earliest live timer due by `until`; False when there is none."""
        timers = self._timers
        while timers and timers[0][0] <= until:
            when, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            timer.cancelled = True  # fired: a later cancel() is a no-op, as on an asyncio handle
            if when > self._now:
                self._now = when
            timer.callback(*timer.args)
            return True
        return False


def _monotonic(_unbound: object) -> float:
    return time.monotonic()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _yield(times: int) -> None:
    for _ in range(times):
        await asyncio.sleep(0)
