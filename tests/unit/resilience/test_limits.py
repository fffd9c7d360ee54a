"""Cluster bulkhead: fast path, FIFO handoff, max_pending and pending_timeout rejections, cancellation safety,
and the max_requests cap under seeded random concurrent workloads (real event loop, small timeouts); the
pending_timeout again in virtual time (ManualClock), without sleeping."""

from __future__ import annotations

import asyncio
import random

import pytest

from proxy.clock import ManualClock
from proxy.config.model import LimitsConfig
from proxy.resilience.limits import Bulkhead, LimitDecision

ADMITTED = LimitDecision.ADMITTED


async def settle() -> None:
    """Let every ready callback and task step run (a few loop iterations)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_from_config_and_defaults() -> None:
    bulkhead = Bulkhead.from_config(LimitsConfig.model_validate({"max_requests": 3, "max_pending": 2,
                                                           "pending_timeout": "250ms"}))
    assert (bulkhead.max_requests, bulkhead.max_pending, bulkhead.pending_timeout) == (3, 2, 0.25)
    default = Bulkhead.from_config(LimitsConfig())
    assert (default.max_requests, default.max_pending, default.pending_timeout) == (1024, 1024, 1.0)
    assert default.snapshot() == {"max_requests": 1024, "max_pending": 1024, "pending_timeout": 1.0,
                                  "in_flight": 0, "pending": 0}


@pytest.mark.parametrize(("args", "message"), [
    ((0, 1, 1.0), "max_requests"), ((1, -1, 1.0), "max_pending"), ((1, 1, -0.5), "pending_timeout")])
def test_rejects_bad_settings(args: tuple[int, int, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Bulkhead(*args)


def test_decision_values_are_metric_reasons() -> None:
    assert LimitDecision.REJECTED_MAX_REQUESTS.value == "max_requests"
    assert LimitDecision.REJECTED_MAX_PENDING.value == "max_pending"
    assert LimitDecision.REJECTED_PENDING_TIMEOUT.value == "pending_timeout"


def test_try_acquire_fast_path_and_release() -> None:
    bulkhead = Bulkhead(2, 0, 1.0)
    assert bulkhead.try_acquire()
    assert bulkhead.try_acquire()
    assert not bulkhead.try_acquire()
    assert bulkhead.in_flight == 2
    bulkhead.release()
    assert bulkhead.in_flight == 1
    assert bulkhead.try_acquire()
    bulkhead.release()
    bulkhead.release()
    assert bulkhead.in_flight == 0


def test_release_without_acquire_raises() -> None:
    bulkhead = Bulkhead(1, 0, 1.0)
    with pytest.raises(RuntimeError):
        bulkhead.release()


async def test_acquire_admits_at_once_when_free() -> None:
    bulkhead = Bulkhead(1, 1, 10.0)
    assert await bulkhead.acquire() is ADMITTED
    assert bulkhead.in_flight == 1


async def test_no_queue_rejects_as_max_requests() -> None:
    bulkhead = Bulkhead(1, 0, 10.0)
    assert bulkhead.try_acquire()
    assert bulkhead.rejection() is LimitDecision.REJECTED_MAX_REQUESTS
    assert await bulkhead.acquire() is LimitDecision.REJECTED_MAX_REQUESTS
    assert bulkhead.in_flight == 1
    assert bulkhead.pending == 0


async def test_full_queue_rejects_at_once() -> None:
    loop = asyncio.get_running_loop()
    bulkhead = Bulkhead(1, 2, 10.0)
    assert bulkhead.try_acquire()
    waiters = [asyncio.create_task(bulkhead.acquire()) for _ in range(2)]
    await settle()
    assert bulkhead.pending == 2
    assert bulkhead.rejection() is LimitDecision.REJECTED_MAX_PENDING
    started = loop.time()
    assert await bulkhead.acquire() is LimitDecision.REJECTED_MAX_PENDING
    # "At once": no waiting for pending_timeout (10 s) or anything else.
    assert loop.time() - started < 0.05
    assert bulkhead.pending == 2
    bulkhead.release()
    bulkhead.release()
    assert [await w for w in waiters] == [ADMITTED, ADMITTED]
    bulkhead.release()
    assert (bulkhead.in_flight, bulkhead.pending) == (0, 0)


async def test_pending_timeout() -> None:
    loop = asyncio.get_running_loop()
    bulkhead = Bulkhead(1, 5, 0.05)
    assert bulkhead.try_acquire()
    assert bulkhead.rejection() is None
    started = loop.time()
    assert await bulkhead.acquire() is LimitDecision.REJECTED_PENDING_TIMEOUT
    waited = loop.time() - started
    assert 0.04 <= waited < 1.0
    assert (bulkhead.in_flight, bulkhead.pending) == (1, 0)
    # The expired waiter is skipped: the release frees the slot instead of handing it to nobody.
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_waiter_admitted_before_timeout_keeps_its_slot() -> None:
    bulkhead = Bulkhead(1, 1, 0.05)
    assert bulkhead.try_acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await settle()
    bulkhead.release()
    assert await waiter is ADMITTED
    # Its timer was cancelled: nothing changes after the deadline passes.
    await asyncio.sleep(0.08)
    assert (bulkhead.in_flight, bulkhead.pending) == (1, 0)
    bulkhead.release()


async def test_fifo_handoff() -> None:
    bulkhead = Bulkhead(1, 10, 5.0)
    assert bulkhead.try_acquire()
    order: list[int] = []

    async def waiter(index: int) -> None:
        assert await bulkhead.acquire() is ADMITTED
        order.append(index)

    tasks = []
    for index in range(5):
        tasks.append(asyncio.create_task(waiter(index)))
        await settle()  # enqueue in a known order
    assert bulkhead.pending == 5
    for expected in range(5):
        bulkhead.release()
        # The slot went straight to the oldest waiter: a newcomer cannot take it before that waiter runs.
        assert not bulkhead.try_acquire()
        await settle()
        assert order == list(range(expected + 1))
    await asyncio.gather(*tasks)
    bulkhead.release()
    assert (bulkhead.in_flight, bulkhead.pending) == (0, 0)


async def test_cancelled_waiter_is_skipped() -> None:
    bulkhead = Bulkhead(1, 10, 5.0)
    assert bulkhead.try_acquire()
    first = asyncio.create_task(bulkhead.acquire())
    await settle()
    second = asyncio.create_task(bulkhead.acquire())
    await settle()
    assert bulkhead.pending == 2
    first.cancel()
    await settle()
    assert first.cancelled()
    assert bulkhead.pending == 1
    bulkhead.release()
    assert await second is ADMITTED
    assert (bulkhead.in_flight, bulkhead.pending) == (1, 0)
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_cancelled_after_handoff_passes_the_slot_on() -> None:
    bulkhead = Bulkhead(1, 10, 5.0)
    assert bulkhead.try_acquire()
    first = asyncio.create_task(bulkhead.acquire())
    await settle()
    second = asyncio.create_task(bulkhead.acquire())
    await settle()
    bulkhead.release()          # hands the slot to `first` ...
    first.cancel()              # ... which is cancelled before it resumes
    await settle()
    assert first.cancelled()
    assert await second is ADMITTED
    assert (bulkhead.in_flight, bulkhead.pending) == (1, 0)
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_cancelled_after_handoff_with_no_one_waiting_frees_the_slot() -> None:
    bulkhead = Bulkhead(1, 10, 5.0)
    assert bulkhead.try_acquire()
    only = asyncio.create_task(bulkhead.acquire())
    await settle()
    bulkhead.release()
    only.cancel()
    await settle()
    assert only.cancelled()
    assert (bulkhead.in_flight, bulkhead.pending) == (0, 0)


async def test_dead_waiters_do_not_pile_up() -> None:
    bulkhead = Bulkhead(1, 10_000, 0.01)
    assert bulkhead.try_acquire()
    results = await asyncio.gather(*(bulkhead.acquire() for _ in range(500)))
    assert set(results) == {LimitDecision.REJECTED_PENDING_TIMEOUT}
    assert bulkhead.pending == 0
    # Timed-out futures are compacted away even though nothing was released meanwhile.
    assert len(bulkhead._waiters) <= 65
    tasks = [asyncio.create_task(bulkhead.acquire()) for _ in range(300)]
    await settle()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert bulkhead.pending == 0
    assert len(bulkhead._waiters) <= 65
    bulkhead.release()
    assert bulkhead.in_flight == 0


@pytest.mark.parametrize("seed", range(8))
async def test_random_workload_never_exceeds_cap_and_leaks_nothing(seed: int) -> None:
    rng = random.Random(seed)
    max_requests = rng.randint(1, 6)
    max_pending = rng.randint(0, 12)
    bulkhead = Bulkhead(max_requests, max_pending, rng.choice([0.002, 0.005, 0.02]))
    holders = 0
    peak = 0
    outcomes: dict[str, int] = {}

    async def request(hold: float, fast: bool) -> None:
        nonlocal holders, peak
        if fast and bulkhead.try_acquire():
            decision = ADMITTED
        else:
            decision = await bulkhead.acquire()
        outcomes[decision.value] = outcomes.get(decision.value, 0) + 1
        if decision is not ADMITTED:
            return
        holders += 1
        peak = max(peak, holders)
        assert holders <= bulkhead.in_flight <= max_requests
        try:
            await asyncio.sleep(hold)
        finally:
            holders -= 1
            bulkhead.release()

    tasks: list[asyncio.Task[None]] = []
    for _ in range(250):
        tasks.append(asyncio.create_task(request(rng.choice([0.0, 0.0, 0.001, 0.004]), rng.random() < 0.5)))
        assert bulkhead.in_flight <= max_requests
        assert bulkhead.pending <= max_pending
        roll = rng.random()
        if roll < 0.15:
            # Cancel a random earlier request, wherever it is: waiting, just handed a slot, or holding one.
            rng.choice(tasks).cancel()
        if roll < 0.5:
            await asyncio.sleep(0)
        elif roll < 0.6:
            await asyncio.sleep(0.001)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert peak <= max_requests
    assert (bulkhead.in_flight, bulkhead.pending, holders) == (0, 0, 0)
    # Every slot is free again: the full capacity can be taken at once.
    assert all(bulkhead.try_acquire() for _ in range(max_requests))
    assert not bulkhead.try_acquire()
    assert outcomes.get("admitted", 0) > 0


# -- pending_timeout in virtual time -------------------------------------------------------------------------


async def test_pending_timeout_expires_when_virtual_time_passes_it() -> None:
    loop = asyncio.get_running_loop()
    clock = ManualClock(start=0.0)
    limits = LimitsConfig.model_validate({"max_requests": 1, "max_pending": 2, "pending_timeout": "30s"})
    bulkhead = Bulkhead.from_config(limits, clock)
    started = loop.time()
    assert bulkhead.try_acquire()
    first = asyncio.create_task(bulkhead.acquire())
    await settle()
    clock.advance(10.0)
    second = asyncio.create_task(bulkhead.acquire())  # queued at t=10: its deadline is t=40
    await settle()
    assert bulkhead.pending == 2 and clock.pending == 2
    clock.advance(19.5)  # (binary fractions: virtual time adds up exactly)
    await settle()
    assert not first.done() and bulkhead.pending == 2
    clock.advance(0.5)  # t=30: the first waiter's pending_timeout has passed, not the second's
    await settle()
    assert await first is LimitDecision.REJECTED_PENDING_TIMEOUT
    assert not second.done() and bulkhead.pending == 1
    bulkhead.release()  # the slot goes to the live waiter, whose timer is then cancelled
    assert await second is ADMITTED
    assert (bulkhead.in_flight, bulkhead.pending, clock.pending) == (1, 0, 0)
    clock.advance(60.0)
    assert bulkhead.in_flight == 1
    bulkhead.release()
    assert loop.time() - started < 1.0  # 90 s of virtual time, no real waiting


async def test_a_cancelled_waiter_leaves_no_timer_in_virtual_time() -> None:
    clock = ManualClock(start=0.0)
    bulkhead = Bulkhead(1, 1, 5.0, clock)
    assert bulkhead.try_acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await settle()
    assert clock.pending == 1
    waiter.cancel()
    await settle()
    assert waiter.cancelled()
    assert (bulkhead.pending, clock.pending) == (0, 0)
    clock.advance(10.0)
    assert bulkhead.in_flight == 1
