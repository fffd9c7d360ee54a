"""Retry budget: ratio x requests + reserve over a sliding 10 s window, and the in-flight cap (virtual time)."""

from __future__ import annotations

import pytest

from proxy.clock import ManualClock
from proxy.config.model import RetryBudgetConfig
from proxy.resilience.budget import BudgetDecision, RetryBudget

ALLOWED = BudgetDecision.ALLOWED
EXHAUSTED = BudgetDecision.BUDGET_EXHAUSTED
LIMITED = BudgetDecision.LIMIT_EXCEEDED


def acquire_all(budget: RetryBudget, limit: int = 10_000) -> int:
    """Acquire (and at once release) retries until refused; return how many were allowed."""
    allowed = 0
    while allowed < limit and budget.try_acquire_retry() is ALLOWED:
        budget.release_retry()
        allowed += 1
    return allowed


def test_decision_values_are_metric_labels() -> None:
    assert {d.value for d in BudgetDecision} == {"retried", "budget_exhausted", "limit_exceeded"}


def test_reserve_without_requests() -> None:
    budget = RetryBudget(0.2, 2, 100, ManualClock())
    assert acquire_all(budget) == 20  # min_per_second x 10 s
    assert budget.try_acquire_retry() is EXHAUSTED


def test_ratio_of_requests() -> None:
    budget = RetryBudget(0.2, 0, 100, ManualClock())
    for _ in range(100):
        budget.record_request()
    assert acquire_all(budget) == 20
    budget.record_request()
    assert budget.try_acquire_retry() is EXHAUSTED  # 0.2 x 101 = 20.2 < 21
    for _ in range(4):
        budget.record_request()
    assert budget.try_acquire_retry() is ALLOWED  # 0.2 x 105 = 21


def test_ratio_plus_reserve() -> None:
    budget = RetryBudget(0.5, 1, 100, ManualClock())
    for _ in range(10):
        budget.record_request()
    assert acquire_all(budget) == 15


def test_window_slides_by_whole_seconds() -> None:
    clock = ManualClock(start=100.0)
    budget = RetryBudget(0.0, 0.3, 100, clock)  # reserve 3
    assert budget.try_acquire_retry() is ALLOWED  # second 100
    clock.advance(4)
    assert budget.try_acquire_retry() is ALLOWED  # second 104
    clock.advance(4)
    assert budget.try_acquire_retry() is ALLOWED  # second 108
    budget.release_retry()
    budget.release_retry()
    budget.release_retry()
    assert budget.try_acquire_retry() is EXHAUSTED
    assert budget.retries_in_window == 3
    clock.advance(1.999)  # 109.999: second 100 still in the window (100..109)
    assert budget.try_acquire_retry() is EXHAUSTED
    clock.advance(0.001)  # 110.0: second 100 has left
    assert budget.retries_in_window == 2
    assert budget.try_acquire_retry() is ALLOWED
    budget.release_retry()
    clock.advance(25)  # far past everything
    assert budget.retries_in_window == 0 and budget.requests_in_window == 0
    assert acquire_all(budget) == 3


def test_requests_expire_too() -> None:
    clock = ManualClock(start=0.0)
    budget = RetryBudget(1.0, 0, 100, clock)
    for _ in range(5):
        budget.record_request()
    clock.advance(9.5)
    assert budget.requests_in_window == 5
    clock.advance(0.5)
    assert budget.requests_in_window == 0
    assert budget.try_acquire_retry() is EXHAUSTED


def test_max_concurrent() -> None:
    budget = RetryBudget(1.0, 100, 2, ManualClock())
    assert budget.try_acquire_retry() is ALLOWED
    assert budget.try_acquire_retry() is ALLOWED
    assert budget.in_flight == 2
    assert budget.try_acquire_retry() is LIMITED
    budget.release_retry()
    assert budget.try_acquire_retry() is ALLOWED
    # A refusal by the cap takes nothing from the window.
    assert budget.retries_in_window == 3


def test_release_never_goes_negative() -> None:
    budget = RetryBudget(1.0, 100, 1, ManualClock())
    budget.release_retry()
    assert budget.in_flight == 0
    assert budget.try_acquire_retry() is ALLOWED
    assert budget.try_acquire_retry() is LIMITED


def test_zero_max_concurrent_refuses_every_retry() -> None:
    assert RetryBudget(1.0, 100, 0, ManualClock()).try_acquire_retry() is LIMITED


def test_from_config_and_validation() -> None:
    budget = RetryBudget.from_config(RetryBudgetConfig(), ManualClock())
    assert (budget.ratio, budget.min_per_second, budget.max_concurrent) == (0.2, 10, 50)
    with pytest.raises(ValueError):
        RetryBudget(-0.1, 1, 1, ManualClock())


@pytest.mark.parametrize(("rate", "ratio", "min_per_second"), [(50, 0.2, 10), (200, 0.2, 10), (10, 0.5, 1),
                                                               (100, 0.0, 5), (1000, 0.1, 0)])
def test_steady_failing_load_stays_within_budget(rate: int, ratio: float, min_per_second: float) -> None:
    """N requests/s, every try failing, 3 retries each wanted, for 30 s of virtual time."""
    clock = ManualClock(start=0.0)
    budget = RetryBudget(ratio, min_per_second, 10_000, clock)
    seconds = 30
    requests = [0] * seconds
    retries = [0] * seconds
    for _ in range(rate * seconds):
        # Tally by the same whole second the budget uses, whatever float drift the steps accumulate.
        second = min(int(clock.now()), seconds - 1)
        budget.record_request()
        requests[second] += 1
        for _ in range(3):
            if budget.try_acquire_retry() is not ALLOWED:
                break
            retries[second] += 1
            budget.release_retry()  # the retry fails at once; it is no longer in flight
        clock.advance(1 / rate)
    reserve = min_per_second * 10
    # Every 10 s window the budget sees (ten whole seconds) holds at most ratio x requests + reserve.
    for end in range(1, seconds + 1):
        start = max(0, end - 10)
        assert sum(retries[start:end]) <= ratio * sum(requests[start:end]) + reserve + 1e-9
    # On average over the run: at most ratio x N + min_per_second retries per second.
    assert sum(retries) / seconds <= ratio * rate + min_per_second + 1e-9
    # And the budget is actually spent, not refused wholesale: the last 10 s reach the allowance.
    assert sum(retries[-10:]) >= int(ratio * sum(requests[-10:]) + reserve) - 1 - ratio * rate
