"""The one classifier: outcomes, breaker failures and retry conditions for every status and failure kind."""

from __future__ import annotations

import pytest

from proxy.config.model import RETRY_CONDITIONS
from proxy.errors import FailureKind
from proxy.resilience.classify import (
    CONNECT_FAILURE,
    GATEWAY_ERROR,
    RESET,
    RETRIABLE_4XX,
    SERVER_ERROR,
    Outcome,
    Verdict,
    classify_cancelled,
    classify_failure,
    classify_status,
    condition_mask,
    condition_names,
    status_bit,
)

CONTRACT_OUTCOME_LABELS = {"success", "failure", "timeout", "reset", "connect_failure"}
CONNECT_KINDS = (FailureKind.CONNECT_REFUSED, FailureKind.CONNECT_TIMEOUT, FailureKind.UNROUTABLE)


def names(verdict: Verdict) -> frozenset[str]:
    return condition_names(verdict.conditions)


def test_outcome_labels_are_the_metric_labels() -> None:
    labels = {o.value for o in Outcome}
    assert labels >= CONTRACT_OUTCOME_LABELS
    assert labels - CONTRACT_OUTCOME_LABELS == {"cancelled"}


@pytest.mark.parametrize("status", range(100, 600))
def test_every_status(status: int) -> None:
    verdict = classify_status(status)
    assert verdict.status == status
    assert verdict.kind is None
    assert str(status) in names(verdict)
    if status >= 500:
        assert verdict.outcome is Outcome.FAILURE and verdict.is_failure
        expected = {str(status), "5xx"} | ({"gateway-error"} if status in (502, 503, 504) else set())
    else:
        assert verdict.outcome is Outcome.SUCCESS and not verdict.is_failure
        expected = {str(status)} | ({"retriable-4xx"} if status == 409 else set())
    assert names(verdict) == expected
    assert verdict.label == verdict.outcome.value


def test_status_verdicts_are_cached() -> None:
    assert classify_status(503) is classify_status(503)
    assert classify_status(200) is classify_status(200)


@pytest.mark.parametrize("status", [0, 99, 600, 999])
def test_status_out_of_range_satisfies_nothing(status: int) -> None:
    verdict = classify_status(status)
    assert verdict.conditions == 0 and not verdict.is_failure and verdict.outcome is Outcome.SUCCESS


@pytest.mark.parametrize("kind", CONNECT_KINDS)
@pytest.mark.parametrize("per_try", [False, True])
def test_connect_failures(kind: FailureKind, per_try: bool) -> None:
    verdict = classify_failure(kind, per_try)
    assert verdict.outcome is Outcome.CONNECT_FAILURE and verdict.label == "connect_failure"
    assert verdict.is_failure
    # Envoy's 5xx covers "did not respond at all"; gateway-error (contract) names only 502/503/504 + per-try.
    assert names(verdict) == {"connect-failure", "5xx"}
    assert verdict.kind is kind and verdict.status == 0


def test_reset() -> None:
    verdict = classify_failure(FailureKind.RESET)
    assert verdict.outcome is Outcome.RESET and verdict.is_failure
    assert names(verdict) == {"reset", "5xx"}


def test_protocol_error_is_a_reset_for_retry_and_a_failure_for_metrics() -> None:
    verdict = classify_failure(FailureKind.PROTOCOL)
    assert verdict.outcome is Outcome.FAILURE and verdict.is_failure
    assert names(verdict) == {"reset", "5xx"}


def test_per_try_timeout_counts_as_504() -> None:
    verdict = classify_failure(FailureKind.TIMEOUT, per_try_timeout=True)
    assert verdict.outcome is Outcome.TIMEOUT and verdict.is_failure
    assert names(verdict) == {"gateway-error", "5xx", "504"}


def test_other_timeouts_fail_but_are_never_retried() -> None:
    verdict = classify_failure(FailureKind.TIMEOUT, per_try_timeout=False)
    assert verdict.outcome is Outcome.TIMEOUT and verdict.is_failure
    assert verdict.conditions == 0


def test_failure_verdicts_are_cached() -> None:
    for kind in FailureKind:
        assert classify_failure(kind) is classify_failure(kind)
        assert classify_failure(kind).kind is kind
        assert classify_failure(kind).is_failure
    assert classify_failure(FailureKind.TIMEOUT, True) is classify_failure(FailureKind.TIMEOUT, True)


def test_cancelled_is_neither_failure_nor_retriable() -> None:
    verdict = classify_cancelled()
    assert verdict.cancelled and not verdict.is_failure
    assert verdict.conditions == 0
    assert not classify_status(500).cancelled


def test_condition_mask_round_trip() -> None:
    mask = condition_mask(["connect-failure", "reset", "gateway-error", "503", "429"])
    assert mask == CONNECT_FAILURE | RESET | GATEWAY_ERROR | status_bit(503) | status_bit(429)
    assert condition_names(mask) == {"connect-failure", "reset", "gateway-error", "503", "429"}
    assert condition_mask(RETRY_CONDITIONS) == CONNECT_FAILURE | RESET | GATEWAY_ERROR | SERVER_ERROR | RETRIABLE_4XX
    assert condition_mask([]) == 0


@pytest.mark.parametrize("bad", ["5XX", "gateway", "600", "42"])
def test_condition_mask_refuses_unknown(bad: str) -> None:
    with pytest.raises(ValueError):
        condition_mask([bad])


def test_status_bits_do_not_collide_with_named_bits() -> None:
    named = CONNECT_FAILURE | RESET | GATEWAY_ERROR | SERVER_ERROR | RETRIABLE_4XX
    bits = [status_bit(s) for s in range(100, 600)]
    assert len(set(bits)) == 500
    assert all(bit & named == 0 for bit in bits)
