"""The retry loop, with fake streams in virtual time: policy, budget, backoff, per-try deadline, replay."""

from __future__ import annotations

import pytest

from proxy.errors import FailureKind
from tests.unit.stages.fakes import COMPILED, Harness, counter, failing, ok, one_route, stalled

pytestmark = pytest.mark.skipif(COMPILED, reason="fake streams subclass native classes (interpreted pass only)")


RETRY_503 = '{attempts: 2, on: ["503"], backoff: {schedule: [1s]}}'


async def test_a_503_is_retried_after_the_backoff_and_the_retry_answers() -> None:
    harness = Harness(config(RETRY_503))
    first, second = ok(503), ok(200, b"second")
    harness.seed("backend", second, first)  # the last seeded is handed out first
    request = harness.start()
    await harness.clock.elapse(0.9)
    assert first.aborted and not second.sent  # dropped, and the retry waits for its backoff
    await harness.clock.elapse(0.2)
    await request.task  # type: ignore[misc]
    assert request.response is not None and request.response.status == 200 and bytes(request.out) == b"second"
    assert [extra for _, extra, _ in second.sent] == [b"2"] and [extra for _, extra, _ in first.sent] == [b"1"]
    assert harness.last["attempts"] == 2 and harness.last["status"] == 200
    assert counter(harness, "sidecar_retries_total", result="retried") == 1


async def test_a_per_try_timeout_retries_on_another_stream() -> None:
    harness = Harness(config('{attempts: 1, per_try_timeout: 1s, on: [gateway-error], backoff: {schedule: [0s]}}'))
    slow, fast = stalled(), ok()
    harness.seed("backend", fast, slow)
    request = harness.start()
    await harness.clock.elapse(1.05)
    await request.task  # type: ignore[misc]
    assert slow.aborted and request.response is not None and request.response.status == 200
    assert counter(harness, "sidecar_upstream_attempts_total", outcome="timeout") == 1
    assert harness.last["attempts"] == 2


async def test_the_last_failure_is_answered_when_attempts_run_out() -> None:
    harness = Harness(config('{attempts: 1, on: [reset], backoff: {schedule: [0s]}}'))
    harness.seed("backend", failing(), failing())
    request = harness.start()
    await harness.clock.elapse(0.1)
    await request.task  # type: ignore[misc]
    assert request.reply is not None and request.reply.head.status == 502
    assert harness.last["attempts"] == 2
    assert counter(harness, "sidecar_upstream_attempts_total", outcome="reset") == 2


async def test_an_exhausted_budget_keeps_the_answer_in_hand() -> None:
    budget = '{attempts: 3, on: ["503"], backoff: {schedule: [0s]}, budget: {ratio: 0.0, min_per_second: 0}}'
    harness = Harness(config(budget))
    harness.seed("backend", ok(503))
    request = await harness.serve()
    assert request.response is not None and request.response.status == 503
    assert counter(harness, "sidecar_retries_total", result="budget_exhausted") == 1
    assert harness.last["attempts"] == 1


async def test_a_body_over_the_replay_buffer_is_not_retried() -> None:
    harness = Harness(config('{attempts: 2, on: ["503"], replay_buffer: 4, backoff: {schedule: [0s]}}'))
    harness.seed("backend", ok(200), ok(503))
    request = await harness.serve(method=b"PUT", body=b"too long")
    assert request.response is not None and request.response.status == 503


async def test_a_post_is_retried_only_when_it_never_reached_the_upstream() -> None:
    harness = Harness(config('{attempts: 2, on: [reset], backoff: {schedule: [0s]}}'))
    harness.seed("backend", ok(), failing(FailureKind.RESET))
    request = await harness.serve(method=b"POST", body=b"x")
    assert request.reply is not None and request.reply.head.status == 502  # a reset POST may have been processed


async def test_no_retry_when_every_breaker_is_open() -> None:
    breaker = ("    circuit_breaker: {min_requests: 1, failure_ratio: 0.5, interval: 10s, open_timeout: 30s,"
               " half_open_requests: 1}")
    harness = Harness(config('{attempts: 2, on: ["503"], backoff: {schedule: [0s]}}', cluster=breaker))
    harness.seed("backend", ok(200), ok(503))
    request = await harness.serve()
    # The 503 opened the only endpoint's breaker: a retry could only be a local 503, so the upstream's stays.
    assert request.response is not None and request.response.status == 503
    assert harness.last["attempts"] == 1


def config(retries: str, cluster: str = "") -> str:
    return one_route(route=f"        retries: {retries}", cluster=cluster)
