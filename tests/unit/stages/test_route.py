"""The route stage, with fake streams in virtual time: its hooks, header rules and the route deadline."""

from __future__ import annotations

import asyncio

import pytest

from proxy.local_reply import Cause
from tests.unit.stages.fakes import COMPILED, Harness, counter, ok, one_route, stalled

pytestmark = pytest.mark.skipif(COMPILED, reason="fake streams subclass native classes (interpreted pass only)")


async def test_rate_limited_requests_get_429_and_never_reach_the_cluster() -> None:
    harness = Harness(one_route("        rate_limit: {requests_per_second: 1, burst: 1}"))
    harness.seed("backend", ok())
    first = await harness.serve()
    second = await harness.serve()
    assert first.response is not None and first.response.status == 200
    assert second.reply is not None and second.reply.head.status == 429
    assert (b"retry-after", b"1") in second.reply.head.headers
    assert harness.last["cause"] is Cause.RATE_LIMITED and harness.last["cluster"] == ""
    assert counter(harness, "sidecar_rate_limited_total", route="api") == 1
    assert counter(harness, "sidecar_requests_total", route="api", cluster="", code="429") == 1


async def test_a_fault_abort_answers_its_status_without_an_attempt() -> None:
    harness = Harness(one_route("        fault: {abort: {status: 418, percent: 100}}"))
    request = await harness.serve()
    assert request.reply is not None and request.reply.head.status == 418
    assert harness.last["cause"] is Cause.FAULT_ABORT and harness.last["attempts"] == 0


async def test_the_route_deadline_answers_504_and_the_breaker_sees_a_timeout() -> None:
    harness = Harness(one_route("        timeout: 2s"))
    upstream = stalled()
    harness.seed("backend", upstream)
    request = harness.start()
    await harness.clock.elapse(1.99)
    assert not request.response_started
    await harness.clock.elapse(0.02)  # one timer-wheel resolution past the deadline
    await request.task  # type: ignore[misc]
    assert request.reply is not None and request.reply.head.status == 504
    assert b"route api: timeout after 2s" in request.reply.body
    assert upstream.aborted
    assert counter(harness, "sidecar_upstream_attempts_total", outcome="timeout") == 1
    record = harness.last
    assert record["status"] == 504 and record["cause"] is Cause.TIMEOUT
    assert record["upstream_time"] == pytest.approx(2.0, abs=0.02)
    assert record["sidecar_time"] == pytest.approx(0.0, abs=0.02)


async def test_a_fault_delay_is_outside_the_route_deadline() -> None:
    harness = Harness(one_route("        timeout: 1s\n        fault: {delay: {fixed: 5s, percent: 100}}"))
    harness.seed("backend", ok())
    request = harness.start()
    await harness.clock.elapse(5.5)
    await asyncio.wait_for(request.task, 1)  # type: ignore[arg-type]
    assert request.response is not None and request.response.status == 200
    assert harness.last["duration"] == pytest.approx(5.0)
    assert harness.last["sidecar_time"] == pytest.approx(5.0)  # the injected delay is the sidecar's


async def test_header_rules_and_rewrite_apply_to_what_is_sent_and_answered() -> None:
    rules = ("        rewrite: {prefix: /v2/}\n"
             "        headers:\n"
             "          request: {set: {x-env: prod}}\n"
             "          response: {remove: [server]}")
    harness = Harness(one_route(rules, prefix="/v1/"))
    upstream = ok(headers=[(b"server", b"upstream"), (b"x-kept", b"1")])
    harness.seed("backend", upstream)
    request = await harness.serve("/v1/items")
    head = upstream.sent[0][0]
    assert head.path == "/v2/items" and (b"x-env", b"prod") in head.headers
    assert request.response is not None and request.response.headers == [(b"x-kept", b"1")]
