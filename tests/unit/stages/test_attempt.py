"""The endpoint attempt, with fake streams: classify, settle (breaker, metrics), relay, stream reuse."""

from __future__ import annotations

import pytest

from proxy.errors import FailureKind
from proxy.local_reply import Cause
from proxy.message import ResponseHead
from proxy.stream import ResponseReady
from tests.unit.stages.fakes import COMPILED, FakeUpstream, Harness, counter, failing, ok, one_route

pytestmark = pytest.mark.skipif(COMPILED, reason="fake streams subclass native classes (interpreted pass only)")

BREAKER = "{min_requests: 2, failure_ratio: 1.0, interval: 10s, open_timeout: 30s, half_open_requests: 1}"
CONFIG = one_route(cluster=f"    circuit_breaker: {BREAKER}")


def attempts(harness: Harness, outcome: str) -> float:
    return counter(harness, "sidecar_upstream_attempts_total", outcome=outcome)


async def test_failures_open_the_breaker_and_then_nothing_reaches_the_endpoint() -> None:
    harness = Harness(CONFIG)
    harness.seed("backend", ok(), failing(FailureKind.RESET), failing(FailureKind.CONNECT_REFUSED))
    first, second = await harness.serve(), await harness.serve()
    assert [r.reply.head.status for r in (first, second) if r.reply is not None] == [503, 502]
    assert attempts(harness, "connect_failure") == 1 and attempts(harness, "reset") == 1
    third = await harness.serve()
    assert third.reply is not None and third.reply.head.status == 503
    assert harness.last["cause"] is Cause.UNAVAILABLE
    assert harness.clusters["backend"].endpoints[0].requests == 2  # the breaker kept the third one away


async def test_a_relayed_answer_keeps_its_trailers_and_its_stream_goes_back_to_the_pool() -> None:
    harness = Harness(CONFIG)
    head = ResponseHead(200, b"", [(b"trailer", b"grpc-status")])
    upstream = FakeUpstream(ResponseReady(head, None, False), b"data", trailers=[(b"grpc-status", b"0")])
    harness.seed("backend", upstream)
    request = await harness.serve()
    assert request.trailers == [(b"grpc-status", b"0")] and bytes(request.out) == b"data"
    assert upstream.finished and not upstream.aborted
    assert attempts(harness, "success") == 1
    assert harness.clusters["backend"].endpoints[0].in_flight == 0


async def test_an_unexpected_101_is_a_502_and_the_stream_is_closed() -> None:
    harness = Harness(CONFIG)
    upstream = FakeUpstream(ResponseReady(ResponseHead(101, b"", []), None, True))
    harness.seed("backend", upstream)
    request = await harness.serve()
    assert request.reply is not None and request.reply.head.status == 502
    assert upstream.aborted and harness.last["cause"] is Cause.UPSTREAM_PROTOCOL


async def test_each_attempt_is_numbered_and_carries_the_whole_body() -> None:
    harness = Harness(CONFIG)
    upstream = ok()
    harness.seed("backend", upstream)
    await harness.serve(method=b"PUT", body=b"payload")
    (_, number, whole), = upstream.sent
    assert number == b"1" and whole == b"payload"
