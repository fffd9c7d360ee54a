"""DeadlineTimers: deadlines on one loop timer fire at or after their time (at most a resolution late), never
when cancelled, and an earlier deadline re-arms the timer."""

from __future__ import annotations

import asyncio

import pytest

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
    timers: DeadlineTimers[str, int] = DeadlineTimers(loop, RESOLUTION)
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
    timers: DeadlineTimers[str, int] = DeadlineTimers(loop, RESOLUTION)
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
    timers: DeadlineTimers[str, int] = DeadlineTimers(loop, RESOLUTION)
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
    timers: DeadlineTimers[str, int] = DeadlineTimers(loop, RESOLUTION)
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
    timers: DeadlineTimers[str, int] = DeadlineTimers(loop, RESOLUTION)
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
            DeadlineTimers(loop, 0)
    finally:
        loop.close()
