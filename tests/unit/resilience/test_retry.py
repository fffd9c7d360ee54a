"""CompiledRetryPolicy: conditions, what may be retried, replay limit and Retry-After."""

from __future__ import annotations

import calendar
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.clock import ManualClock
from proxy.config.model import RetryPolicyConfig
from proxy.errors import FailureKind
from proxy.resilience.backoff import ExponentialBackoff, FixedSchedule
from proxy.resilience.budget import BudgetDecision
from proxy.resilience.classify import classify_cancelled, classify_failure, classify_status
from proxy.resilience.retry import CompiledRetryPolicy, parse_retry_after

NOW = calendar.timegm((2024, 5, 1, 12, 0, 0))


def policy(**fields: object) -> CompiledRetryPolicy:
    return CompiledRetryPolicy.from_config(RetryPolicyConfig.model_validate(fields), ManualClock())


def test_defaults_from_config() -> None:
    compiled = policy()
    assert compiled.attempts == 1
    assert compiled.per_try_timeout is None
    assert compiled.replay_buffer == 64 * 1024
    assert compiled.max_retry_after == 5.0
    assert isinstance(compiled.backoff, ExponentialBackoff)
    assert (compiled.backoff.base, compiled.backoff.max) == (0.025, 0.25)
    budget = compiled.budget
    assert (budget.ratio, budget.min_per_second, budget.max_concurrent) == (0.2, 10, 50)


def test_contract_example_compiles() -> None:
    compiled = policy(attempts=4, per_try_timeout="1s", on=["connect-failure", "reset", "gateway-error", "503"],
                      backoff={"schedule": ["100ms", "500ms"]}, budget={"ratio": 0.5, "min_per_second": 1,
                                                                      "max_concurrent": 3},
                      replay_buffer="1KiB", max_retry_after="2s")
    assert compiled.attempts == 4 and compiled.per_try_timeout == 1.0
    assert isinstance(compiled.backoff, FixedSchedule) and compiled.backoff.delays == (0.1, 0.5)
    assert compiled.replay_buffer == 1024 and compiled.max_retry_after == 2.0
    assert compiled.budget.max_concurrent == 3


def test_default_conditions() -> None:
    compiled = policy()  # connect-failure, reset, gateway-error
    for kind in (FailureKind.CONNECT_REFUSED, FailureKind.CONNECT_TIMEOUT, FailureKind.UNROUTABLE,
                 FailureKind.RESET, FailureKind.PROTOCOL):
        assert compiled.should_retry(classify_failure(kind))
    assert compiled.should_retry(classify_failure(FailureKind.TIMEOUT, per_try_timeout=True))
    assert not compiled.should_retry(classify_failure(FailureKind.TIMEOUT, per_try_timeout=False))
    for status in (502, 503, 504):
        assert compiled.should_retry(classify_status(status))
    for status in (200, 404, 409, 429, 500, 501, 505):
        assert not compiled.should_retry(classify_status(status))
    assert not compiled.should_retry(classify_cancelled())


def test_5xx_covers_all_5xx_and_what_gateway_error_covers() -> None:
    compiled = policy(on=["5xx"])
    assert all(compiled.should_retry(classify_status(s)) for s in range(500, 600))
    assert not any(compiled.should_retry(classify_status(s)) for s in range(100, 500))
    assert compiled.should_retry(classify_failure(FailureKind.TIMEOUT, per_try_timeout=True))
    assert compiled.should_retry(classify_failure(FailureKind.RESET))
    assert compiled.should_retry(classify_failure(FailureKind.CONNECT_REFUSED))


def test_gateway_error_alone() -> None:
    compiled = policy(on=["gateway-error"])
    assert [s for s in range(100, 600) if compiled.should_retry(classify_status(s))] == [502, 503, 504]
    assert compiled.should_retry(classify_failure(FailureKind.TIMEOUT, per_try_timeout=True))
    assert not compiled.should_retry(classify_failure(FailureKind.RESET))
    assert not compiled.should_retry(classify_failure(FailureKind.CONNECT_REFUSED))


def test_connect_failure_alone_is_not_reset() -> None:
    compiled = policy(on=["connect-failure"])
    assert compiled.should_retry(classify_failure(FailureKind.CONNECT_TIMEOUT))
    assert not compiled.should_retry(classify_failure(FailureKind.RESET))
    assert not compiled.should_retry(classify_status(503))


def test_retriable_4xx_and_listed_codes() -> None:
    compiled = policy(on=["retriable-4xx", "429", "503"])
    assert [s for s in range(100, 600) if compiled.should_retry(classify_status(s))] == [409, 429, 503]
    assert not compiled.should_retry(classify_failure(FailureKind.RESET))
    # A per-try timeout counts as 504, so a listed "504" retries it.
    assert policy(on=["504"]).should_retry(classify_failure(FailureKind.TIMEOUT, per_try_timeout=True))


def test_no_conditions_never_retries() -> None:
    compiled = policy(on=[])
    assert not any(compiled.should_retry(classify_status(s)) for s in range(100, 600))
    assert not any(compiled.should_retry(classify_failure(k)) for k in FailureKind)


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"])
def test_idempotent_methods_may_be_retried(method: bytes) -> None:
    assert CompiledRetryPolicy.may_retry_request(method, False, True)


@pytest.mark.parametrize("method", [b"POST", b"PATCH", b"CONNECT", b"get", b"PURGE"])
def test_other_methods_need_a_key_or_an_unreached_upstream(method: bytes) -> None:
    compiled = policy()
    assert not compiled.may_retry_request(method, False, True)
    assert compiled.may_retry_request(method, True, True)
    assert compiled.may_retry_request(method, False, False)


def test_replay_buffer_limit() -> None:
    compiled = policy(replay_buffer="1KiB")
    assert compiled.may_replay(0) and compiled.may_replay(1024)
    assert not compiled.may_replay(1025)


# -- Retry-After ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_delta_seconds(status: int) -> None:
    compiled = policy(max_retry_after="5s")
    assert compiled.retry_after_delay(b"2", status, NOW) == 2.0
    assert compiled.retry_after_delay(b" 3 ", status, NOW) == 3.0
    assert compiled.retry_after_delay(b"0", status, NOW) == 0.0


@pytest.mark.parametrize("status", [200, 409, 500, 502, 504])
def test_retry_after_only_on_429_and_503(status: int) -> None:
    assert policy().retry_after_delay(b"2", status, NOW) is None


def test_retry_after_capped_at_max() -> None:
    compiled = policy(max_retry_after="5s")
    assert compiled.retry_after_delay(b"120", 503, NOW) == 5.0
    assert compiled.retry_after_delay(b"9" * 40, 503, NOW) == 5.0
    assert compiled.retry_after_delay(formatdate(NOW + 3600, usegmt=True).encode(), 429, NOW) == 5.0


def test_retry_after_http_dates() -> None:
    compiled = policy(max_retry_after="1m")
    imf = formatdate(NOW + 30, usegmt=True).encode()  # IMF-fixdate
    assert compiled.retry_after_delay(imf, 503, NOW) == 30.0
    assert compiled.retry_after_delay(b"Wednesday, 01-May-24 12:00:10 GMT", 503, NOW) == 10.0  # RFC 850
    assert compiled.retry_after_delay(b"Wed May  1 12:00:20 2024", 503, NOW) == 20.0  # asctime
    # A date in the past means now.
    assert compiled.retry_after_delay(formatdate(NOW - 30, usegmt=True).encode(), 503, NOW) == 0.0


@pytest.mark.parametrize("value", [None, b"", b"  ", b"-5", b"1.5", b"soon", b"\xff\xfe", b"Wed, 99 Foo 2024"])
def test_retry_after_unusable_values(value: bytes | None) -> None:
    assert policy().retry_after_delay(value, 503, NOW) is None


@given(st.binary(max_size=64))
def test_parse_retry_after_never_raises(value: bytes) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0


def test_budget_and_backoff_use_the_injected_clock() -> None:
    clock = ManualClock()
    compiled = CompiledRetryPolicy.from_config(
        RetryPolicyConfig.model_validate({"budget": {"ratio": 0, "min_per_second": 0.1, "max_concurrent": 5}}), clock)
    assert compiled.budget.try_acquire_retry() is BudgetDecision.ALLOWED  # reserve: 0.1/s x 10 s = 1
    compiled.budget.release_retry()
    assert compiled.budget.try_acquire_retry() is BudgetDecision.BUDGET_EXHAUSTED
    clock.advance(10)
    assert compiled.budget.try_acquire_retry() is BudgetDecision.ALLOWED
    # Jitter draws from the clock's seeded Random: same seed, same delays.
    again = CompiledRetryPolicy.from_config(RetryPolicyConfig(), ManualClock())
    assert [again.backoff.delay(n) for n in (1, 2, 3)] == [compiled.backoff.delay(n) for n in (1, 2, 3)]
