"""DeadlineTimers: deadlines on one clock timer fire at or after their time (at most a resolution late), never
when cancelled, and an earlier deadline re-arms the timer; on the real loop, and in virtual time (ManualClock)."""

from __future__ import annotations

import asyncio
import math

import pytest

from proxy.clock import Clock, ManualClock
from proxy.resilience.timeout import DeadlineTimers

RESOLUTION = 0.01
# Loop timers are not exact on a loaded machine: how late a deadline may fire beyond its bucket.
SLACK = 0.25


def recorder(loop: asyncio.AbstractEventLoop, fired: list[tuple[str, int, float]]):  # type: ignore[no-untyped-def]
    def record(name: str, number: int) -> None:
        fired.append((name, number, loop.time()))
    return record


async def test_a_deadline_fires_at_or_after_its_time_and_at_most_a_resolution_late() -> None:
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), RESOLUTION)
    fired: list[tuple[str, int, float]] = []
    when = loop.time() + 0.05
    timers.call_at(when, recorder(loop, fired), "route", 1)
    await asyncio.sleep(0.03)
    assert fired == []
    await asyncio.sleep(0.05 + SLACK)
    assert [(name, number) for name, number, _ in fired] == [("route", 1)]
    assert when <= fired[0][2] <= when + RESOLUTION + SLACK
    assert len(timers) == 0


async def test_a_cancelled_deadline_never_fires() -> None:
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), RESOLUTION)
    fired: list[tuple[str, int, float]] = []
    kept = timers.call_at(loop.time() + 0.03, recorder(loop, fired), "kept", 1)
    dropped = timers.call_at(loop.time() + 0.03, recorder(loop, fired), "dropped", 2)
    assert len(timers) == 2
    dropped.cancel()
    assert len(timers) == 1
    await asyncio.sleep(0.03 + RESOLUTION + SLACK)
    assert [name for name, _, _ in fired] == ["kept"]
    kept.cancel()  # after it fired: nothing to do, and no error
    dropped.cancel()  # twice: the same


async def test_deadlines_fire_in_time_order_and_a_callback_may_cancel_a_later_one() -> None:
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), RESOLUTION)
    fired: list[str] = []
    start = loop.time()
    scheduled = []

    def first(name: str, _number: int) -> None:
        fired.append(name)
        scheduled[0].cancel()  # e.g. the route deadline settles the request, so its per-try deadline is moot

    timers.call_at(start + 0.04, first, "same-bucket-first", 0)
    scheduled.append(timers.call_at(start + 0.04, lambda name, _n: fired.append(name), "same-bucket-second", 0))
    timers.call_at(start + 0.02, lambda name, _n: fired.append(name), "earlier", 0)
    timers.call_at(start + 0.08, lambda name, _n: fired.append(name), "last", 0)
    await asyncio.sleep(0.08 + RESOLUTION + SLACK)
    # Within a bucket, in the order they were scheduled; the cancelled one never runs.
    assert fired == ["earlier", "same-bucket-first", "last"]


async def test_an_earlier_deadline_scheduled_after_a_later_one_rearms_the_timer() -> None:
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), RESOLUTION)
    fired: list[tuple[str, int, float]] = []
    timers.call_at(loop.time() + 5.0, recorder(loop, fired), "far", 1)
    near = loop.time() + 0.03
    timers.call_at(near, recorder(loop, fired), "near", 2)
    await asyncio.sleep(0.03 + RESOLUTION + SLACK)
    assert [name for name, _, _ in fired] == ["near"]
    assert near <= fired[0][2]
    assert len(timers) == 1
    timers.close()
    assert len(timers) == 0


async def test_many_deadlines_cancelled_leave_nothing_behind() -> None:
    # The request path's common case: every request schedules deadlines and finishes before them.
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), RESOLUTION)
    fired: list[tuple[str, int, float]] = []
    for number in range(1000):
        timers.call_at(loop.time() + 0.02 + number * 0.00003, recorder(loop, fired), "request", number).cancel()
    assert len(timers) == 0
    await asyncio.sleep(0.05 + RESOLUTION + SLACK)
    assert fired == []
    assert timers._buckets == {} and timers._ticks == []  # fired (empty) buckets are dropped


def test_resolution_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="resolution"):
            DeadlineTimers(Clock(loop=loop), 0)
    finally:
        loop.close()


def test_under_uvloop_a_bucket_fires_once_and_the_loop_does_not_spin() -> None:
    # uvloop's clock counts whole milliseconds; a bucket time a float step above that millisecond must still
    # count as due (it used to re-arm with a zero delay until the next millisecond, hundreds of times).
    import uvloop

    loop = uvloop.new_event_loop()

    class CountingLoop(asyncio.AbstractEventLoop):
        """The uvloop loop's clock and timers, counting how often the loop timer is armed."""

        armed = 0

        def time(self) -> float:
            return loop.time()

        def call_at(self, when, callback, *args, context=None):  # type: ignore[no-untyped-def]
            CountingLoop.armed += 1
            return loop.call_at(when, callback, *args, context=context)

    try:
        timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=CountingLoop()), RESOLUTION)
        fired: list[int] = []

        async def schedule() -> None:
            start = loop.time()
            for number in range(60):
                timers.call_at(start + 0.005 + number * 0.01, lambda _name, n: fired.append(n), "d", number)
            await asyncio.sleep(0.7)

        loop.run_until_complete(schedule())
        assert fired == list(range(60))
        assert CountingLoop.armed <= 62  # one wake-up a bucket (give or take the first and last)
    finally:
        loop.close()


async def test_a_failing_callback_is_logged_and_the_others_still_fire(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), RESOLUTION)
    fired: list[str] = []

    def failing(_name: str, _number: int) -> None:
        raise RuntimeError("boom")

    when = loop.time() + 0.02
    timers.call_at(when, failing, "first", 0)
    timers.call_at(when, lambda name, _n: fired.append(name), "second", 0)
    timers.call_at(when + 0.05, lambda name, _n: fired.append(name), "later bucket", 0)
    await asyncio.sleep(0.07 + RESOLUTION + SLACK)
    assert fired == ["second", "later bucket"]
    assert "deadline callback failed" in caplog.text


async def test_deadlines_of_one_bucket_fire_in_time_order_whatever_order_they_came_in() -> None:
    # A per-try deadline scheduled after the route's, but earlier, in the same bucket: it fires first.
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), 1.0)  # one wide bucket
    fired: list[str] = []
    base = math.floor(loop.time()) + 1.0
    timers.call_at(base + 0.6, lambda name, _n: fired.append(name), "route", 0)
    timers.call_at(base + 0.3, lambda name, _n: fired.append(name), "per-try", 0)
    await asyncio.sleep(base + 1.0 - loop.time() + SLACK)
    assert fired == ["per-try", "route"]


async def test_an_infinite_deadline_never_fires_and_costs_nothing() -> None:
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), RESOLUTION)
    deadline = timers.call_at(math.inf, lambda _name, _n: None, "never", 0)
    assert len(timers) == 0 and timers._ticks == []
    deadline.cancel()


async def test_cancelled_far_deadlines_hold_no_buckets_and_their_ticks_are_compacted() -> None:
    # A route timeout of an hour: every request's deadline is cancelled long before its bucket's time.
    loop = asyncio.get_running_loop()
    timers: DeadlineTimers[str, int] = DeadlineTimers(Clock(loop=loop), RESOLUTION)
    for number in range(10_000):
        timers.call_at(loop.time() + 3600 + number * RESOLUTION, lambda _name, _n: None, "far", number).cancel()
    assert timers._buckets == {}
    assert len(timers._ticks) <= 64 + 1
    timers.close()


# -- in virtual time (ManualClock): the same guarantees, exactly, without sleeping ----------------------------


def virtual(resolution: float = RESOLUTION) -> tuple[ManualClock, DeadlineTimers[str, int], list[tuple[str, float]]]:
    clock = ManualClock(start=100.0)
    timers: DeadlineTimers[str, int] = DeadlineTimers(clock, resolution)
    fired: list[tuple[str, float]] = []
    return clock, timers, fired


def test_virtual_deadlines_fire_in_time_order_never_early_at_most_a_resolution_late() -> None:
    clock, timers, fired = virtual()

    def record(name: str, _number: int) -> None:
        fired.append((name, clock.now()))

    # Scheduled out of order; the middle three share the bucket that ends at 100.21.
    whens = {"route": 100.5, "per-try": 100.203, "bucket-last": 100.2049, "bucket-first": 100.2011,
             "far": 130.0}
    for name, when in whens.items():
        timers.call_at(when, record, name, 0)
    assert len(timers) == 5
    clock.advance(0.2)
    assert fired == []
    clock.advance(0.0099)  # 100.2099: the bucket's deadlines are past, but its time is not: nothing fires
    assert fired == []
    clock.advance(0.0001)
    assert [name for name, _ in fired] == ["bucket-first", "per-try", "bucket-last"]
    clock.advance(30.0)
    assert [name for name, _ in fired] == ["bucket-first", "per-try", "bucket-last", "route", "far"]
    for name, at in fired:
        assert whens[name] <= at <= whens[name] + RESOLUTION + 1e-9
    assert len(timers) == 0 and clock.pending == 0


def test_virtual_cancelled_deadlines_never_fire_and_an_earlier_one_rearms_the_clock_timer() -> None:
    clock, timers, fired = virtual()

    def record(name: str, _number: int) -> None:
        fired.append((name, clock.now()))

    timers.call_at(160.0, record, "far", 1)
    assert clock.next_due() == pytest.approx(160.0)
    timers.call_at(100.03, record, "near", 2)
    assert clock.next_due() == pytest.approx(100.03)  # re-armed for the earlier bucket
    timers.call_at(100.03, record, "dropped", 3).cancel()
    clock.advance(1.0)
    assert [name for name, _ in fired] == ["near"]
    clock.advance(59.0)
    assert [name for name, _ in fired] == ["near", "far"]
    assert clock.pending == 0


def test_virtual_a_callback_may_cancel_a_later_deadline_of_its_bucket() -> None:
    clock, timers, fired = virtual(1.0)  # one wide bucket
    scheduled = []

    def first(name: str, _number: int) -> None:
        fired.append((name, clock.now()))
        scheduled[0].cancel()  # e.g. the route deadline settles the request, so its per-try deadline is moot

    timers.call_at(100.3, first, "first", 0)
    scheduled.append(timers.call_at(100.6, lambda name, _n: fired.append((name, clock.now())), "second", 0))
    clock.advance(1.0)
    assert [name for name, _ in fired] == ["first"]


def test_virtual_closing_drops_every_deadline_and_the_clock_timer() -> None:
    clock, timers, fired = virtual()
    timers.call_at(100.05, lambda name, _n: fired.append((name, clock.now())), "never", 0)
    timers.close()
    assert clock.pending == 0
    clock.advance(1.0)
    assert fired == [] and len(timers) == 0
