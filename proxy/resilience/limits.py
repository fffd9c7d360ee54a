"""The cluster bulkhead: a cap on concurrent requests with a bounded, time-limited FIFO queue.

Owns the meaning of a cluster's `limits` (what Envoy calls circuit-breaker thresholds, anchors 2.4):
at most `max_requests` requests in flight; up to `max_pending` more wait for a slot, oldest first;
a waiter gives up after `pending_timeout`. Answers are `LimitDecision` values (an expected outcome,
not an exception) that the caller turns into the 503 `connection_limit_reached` local reply, and whose
`.value` is the `reason` label of `sidecar_limits_rejected_total`.

Slots are handed over, never re-raced: `release()` gives the freed slot straight to the oldest live
waiter, so a newcomer's `try_acquire()` cannot overtake the queue, and `in_flight` never exceeds
`max_requests`. A waiter cancelled after it was handed a slot passes that slot on, so cancellations
never leak a slot.

Must not: know endpoints, routes or metrics; use `asyncio.wait_for` (a Task per call, see the design
hot-path rules); hold per-request objects beyond one future and one timer handle per *waiting* request.

Time: the wait deadline is a timer of the injected `Clock` (the real clock's timers are the event loop's,
so a waiter wakes on the loop's time; a `ManualClock` lets a test expire `pending_timeout` without
sleeping). The admission decision itself involves no time at all.

Per worker: each worker process has its own bulkhead, so with `workers: N` a cluster admits up to
N x `max_requests` in all (Envoy's thresholds are shared by its threads; ours cannot be without a lock
across processes). The README must say so.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque

from proxy.clock import Clock
from proxy.config.model import LimitsConfig

# Dead futures (timed out or cancelled waiters) stay in the queue until `release()` skips them. When
# nothing releases for a while (a hung upstream holding every slot) they would pile up, so the queue is
# compacted once dead entries outnumber live ones and exceed this floor (amortised O(1)).
_COMPACT_FLOOR = 64


class LimitDecision(enum.Enum):
    """The bulkhead's answer. `.value` is the metric reason label (except for ADMITTED)."""

    ADMITTED = "admitted"
    # All slots busy and no queue configured (max_pending = 0).
    REJECTED_MAX_REQUESTS = "max_requests"
    # All slots busy and max_pending requests already waiting: rejected at once, without waiting.
    REJECTED_MAX_PENDING = "max_pending"
    # Waited pending_timeout without getting a slot.
    REJECTED_PENDING_TIMEOUT = "pending_timeout"


_ADMITTED = LimitDecision.ADMITTED


class Bulkhead:
    """Concurrency cap + bounded FIFO wait queue for one cluster (per worker)."""

    __slots__ = ("_clock", "_dead", "_full", "_in_flight", "_max_pending", "_max_requests", "_pending",
                 "_pending_timeout", "_waiters")

    def __init__(self, max_requests: int, max_pending: int, pending_timeout: float,
                 clock: Clock | None = None) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests must be at least 1 (got {max_requests})")
        if max_pending < 0:
            raise ValueError(f"max_pending cannot be negative (got {max_pending})")
        if pending_timeout < 0:
            raise ValueError(f"pending_timeout cannot be negative (got {pending_timeout})")
        self._max_requests = max_requests
        self._max_pending = max_pending
        self._pending_timeout = pending_timeout
        # The real clock by default: it is the running loop's, like every real Clock.
        self._clock = clock if clock is not None else Clock()
        # The answer when every slot is busy and the queue is full (or there is no queue), decided once.
        self._full = LimitDecision.REJECTED_MAX_REQUESTS if max_pending == 0 else LimitDecision.REJECTED_MAX_PENDING
        self._in_flight = 0
        # Live waiters only; the deque also holds dead (done) futures until they are skipped or compacted.
        self._pending = 0
        self._dead = 0
        # Each future resolves to True (handed a slot) or False (pending_timeout expired).
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @classmethod
    def from_config(cls, limits: LimitsConfig, clock: Clock | None = None) -> Bulkhead:
        return cls(limits.max_requests, limits.max_pending, limits.pending_timeout, clock)

    @property
    def in_flight(self) -> int:
        """Slots held (including slots handed to a waiter that has not resumed yet)."""
        return self._in_flight

    @property
    def pending(self) -> int:
        """Requests waiting for a slot right now (timed-out and cancelled waiters excluded)."""
        return self._pending

    @property
    def max_requests(self) -> int:
        return self._max_requests

    @property
    def max_pending(self) -> int:
        return self._max_pending

    @property
    def pending_timeout(self) -> float:
        return self._pending_timeout

    def try_acquire(self) -> bool:
        """Take a free slot without waiting; False when every slot is busy (then `await acquire()`).

        While anyone waits, every slot is busy (release hands slots over directly), so this cannot
        jump the queue.
        """
        if self._in_flight < self._max_requests:
            self._in_flight += 1
            return True
        return False

    def rejection(self) -> LimitDecision | None:
        """Without waiting: the rejection `acquire()` would answer at once, or None if it would queue.

        For callers that want to avoid the coroutine when the answer is known (call after a failed
        `try_acquire`)."""
        if self._pending >= self._max_pending:
            return self._full
        return None

    async def acquire(self) -> LimitDecision:
        """A slot (ADMITTED; the caller must `release()` it) or the reason there is none.

        Rejects at once when the queue is full; otherwise waits in FIFO order for at most
        `pending_timeout`. If the calling task is cancelled while waiting, the cancellation propagates and
        no slot is kept.
        """
        if self._in_flight < self._max_requests:
            self._in_flight += 1
            return _ADMITTED
        if self._pending >= self._max_pending:
            return self._full
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._pending += 1
        clock = self._clock
        timer = clock.call_at(clock.now() + self._pending_timeout, self._expire, waiter)
        try:
            granted = await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                # Left the queue while still waiting: it is now a dead entry.
                self._bury()
            elif waiter.result():
                # Handed a slot, then cancelled before resuming: pass the slot on rather than leak it.
                self.release()
            raise
        finally:
            timer.cancel()
        if granted:
            return _ADMITTED
        return LimitDecision.REJECTED_PENDING_TIMEOUT

    def release(self) -> None:
        """Give back a slot: to the oldest live waiter if any, else to the free pool."""
        if self._in_flight <= 0:
            # A double release would silently raise the cap; fail loudly instead.
            raise RuntimeError("bulkhead released more slots than were acquired")
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if waiter.done():
                # Timed out or cancelled earlier; already uncounted from `pending`.
                self._dead -= 1
                continue
            # The slot changes hands without touching in_flight, so no newcomer can take it meanwhile.
            self._pending -= 1
            waiter.set_result(True)
            return
        self._in_flight -= 1

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        if waiter.done():
            return
        waiter.set_result(False)
        self._bury()

    def _bury(self) -> None:
        # A waiter left the queue without a slot; its done future stays queued until skipped or compacted.
        self._pending -= 1
        self._dead += 1
        if self._dead > _COMPACT_FLOOR and self._dead > self._pending:
            self._waiters = deque(w for w in self._waiters if not w.done())
            self._dead = 0

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows for the cluster's limits."""
        return {
            "max_requests": self._max_requests,
            "max_pending": self._max_pending,
            "pending_timeout": self._pending_timeout,
            "in_flight": self._in_flight,
            "pending": self._pending,
        }

    def __repr__(self) -> str:
        return (f"Bulkhead(in_flight={self._in_flight}/{self._max_requests}, "
                f"pending={self._pending}/{self._max_pending}, pending_timeout={self._pending_timeout})")
