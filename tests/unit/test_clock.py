"""Clock: the real clock is the running loop's (time and timers); ManualClock is virtual time with its own timer
heap, fired in time order by `advance` and `elapse`, with `sleep` resolving only when virtual time passes."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from proxy.clock import Clock, ManualClock


async def test_the_real_clock_reads_the_running_loops_time() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock()
    before = loop.time()
    now = clock.now()
    assert before <= now <= loop.time()


def test_under_uvloop_now_is_the_loops_millisecond_clock() -> None:
    # Deadlines computed from now() and timers armed on the loop must agree, resolution and all.
    async def read() -> tuple[float, float]:
        clock = Clock()
        return clock.now(), asyncio.get_running_loop().time()

    loop = uvloop.new_event_loop()
    try:
        now, loop_time = loop.run_until_complete(read())
    finally:
        loop.close()
    assert now == loop_time
    assert round(now * 1000) == pytest.approx(now * 1000, abs=1e-6)  # whole milliseconds


async def test_the_real_clocks_timers_are_the_loops() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock()
    fired: list[tuple[str, float]] = []
    when = clock.now() + 0.02
    clock.call_at(when, lambda name: fired.append((name, loop.time())), "kept")
    clock.call_at(when, lambda name: fired.append((name, loop.time())), "dropped").cancel()
    await clock.sleep(0.05)
    assert [name for name, _ in fired] == ["kept"]
    assert fired[0][1] >= when


def test_a_clock_made_outside_a_loop_is_monotonic_and_binds_to_the_loop_it_schedules_on() -> None:
    clock = Clock()
    assert abs(clock.now() - time.monotonic()) < 1.0
    with pytest.raises(RuntimeError):
        clock.call_at(clock.now(), lambda: None)  # no loop to schedule on

    async def schedule() -> float:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        clock.call_at(clock.now(), done.set_result, "fired")
        assert await done == "fired"
        return loop.time()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(schedule())
        assert clock.now() == loop.time()  # bound: from now on it reads the loop's clock
    finally:
        loop.close()


def test_wall_is_epoch_seconds_and_random_is_injectable() -> None:
    import random

    clock = Clock(random.Random(7))
    assert abs(clock.wall() - time.time()) < 5.0
    assert clock.random.random() == random.Random(7).random()


# -- ManualClock -------------------------------------------------------------------------------------------


def test_manual_time_moves_only_when_told() -> None:
    clock = ManualClock(start=50.0)
    assert clock.now() == clock.wall() == 50.0
    clock.advance(2.5)
    assert clock.now() == 52.5
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1.0)


def test_manual_timers_fire_in_time_order_at_their_own_time() -> None:
    clock = ManualClock(start=0.0)
    fired: list[tuple[str, float]] = []

    def record(name: str) -> None:
        fired.append((name, clock.now()))

    clock.call_at(3.0, record, "third")
    clock.call_at(1.0, record, "first")
    clock.call_at(2.0, record, "second-a")
    clock.call_at(2.0, record, "second-b")  # same time: in the order scheduled
    clock.call_at(9.0, record, "later")
    assert clock.pending == 5 and clock.next_due() == 1.0
    clock.advance(0.5)
    assert fired == []
    clock.advance(2.5)
    assert fired == [("first", 1.0), ("second-a", 2.0), ("second-b", 2.0), ("third", 3.0)]
    assert clock.now() == 3.0
    assert clock.pending == 1 and clock.next_due() == 9.0


def test_a_cancelled_manual_timer_never_fires_and_cancel_after_firing_is_harmless() -> None:
    clock = ManualClock(start=0.0)
    fired: list[str] = []
    dropped = clock.call_at(1.0, fired.append, "dropped")
    kept = clock.call_at(1.0, fired.append, "kept")
    dropped.cancel()
    assert clock.pending == 1
    clock.advance(1.0)
    assert fired == ["kept"]
    kept.cancel()
    assert clock.pending == 0 and clock.next_due() is None


def test_a_timer_scheduled_by_a_callback_fires_in_the_same_advance_when_due() -> None:
    clock = ManualClock(start=0.0)
    fired: list[float] = []

    def rearm() -> None:
        fired.append(clock.now())
        if len(fired) < 3:
            clock.call_at(clock.now() + 1.0, rearm)

    clock.call_at(1.0, rearm)
    clock.advance(10.0)
    assert fired == [1.0, 2.0, 3.0]


def test_a_failing_manual_callback_reaches_the_test() -> None:
    clock = ManualClock(start=0.0)

    def boom() -> None:
        raise RuntimeError("boom")

    clock.call_at(1.0, boom)
    with pytest.raises(RuntimeError, match="boom"):
        clock.advance(2.0)


async def test_manual_sleep_resolves_when_virtual_time_passes_without_real_waiting() -> None:
    loop = asyncio.get_running_loop()
    clock = ManualClock(start=0.0)
    started = loop.time()
    sleeper = asyncio.create_task(clock.sleep(3600.0))
    await asyncio.sleep(0)
    clock.advance(3599.0)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(1.0)
    await sleeper
    assert clock.now() == 3600.0
    assert loop.time() - started < 1.0  # an hour of virtual time, no real one


async def test_manual_sleep_zero_yields_once_and_a_cancelled_sleep_leaves_no_timer() -> None:
    clock = ManualClock(start=0.0)
    await clock.sleep(0)
    assert clock.pending == 0
    sleeper = asyncio.create_task(clock.sleep(5.0))
    await asyncio.sleep(0)
    assert clock.pending == 1
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert clock.pending == 0


async def test_elapse_lets_woken_code_run_before_later_timers_fire() -> None:
    # A retry loop: sleep, act, sleep again. With `elapse`, each sleep starts at the virtual time the previous
    # one ended, as it would in real time.
    clock = ManualClock(start=0.0)
    woke: list[float] = []

    async def loop_of_sleeps() -> None:
        for delay in (1.0, 2.0, 4.0):
            await clock.sleep(delay)
            woke.append(clock.now())

    task = asyncio.create_task(loop_of_sleeps())
    await clock.elapse(6.0)
    assert woke == [1.0, 3.0]
    assert clock.now() == 6.0
    await clock.elapse(1.0)
    assert woke == [1.0, 3.0, 7.0]
    await task
    with pytest.raises(ValueError, match="back"):
        await clock.elapse(-0.1)
