"""gRPC calls through the stages, with fake streams: local replies in gRPC's shape (HTTP 200, grpc-status by
cause, Proxy-Status kept), a trailers-only UNAVAILABLE retried under `unavailable`, a grpc-status in the
trailers reaching the breaker and the metrics, and `grpc-timeout` capping the deadline and going upstream.
(The codec marks a request as gRPC from its content-type; HTTP/2 carries them.)"""

from __future__ import annotations

import pytest

from proxy.message import Headers, ResponseHead, first_header
from proxy.stream import ResponseReady
from tests.unit.stages.fakes import (
    COMPILED,
    FakeRequest,
    FakeUpstream,
    Harness,
    counter,
    one_route,
    stalled,
)

pytestmark = pytest.mark.skipif(COMPILED, reason="fake streams subclass native classes (interpreted pass only)")

GRPC = [(b"content-type", b"application/grpc")]


def grpc_answer(status: bytes, trailers_only: bool) -> FakeUpstream:
    headers: Headers = [(b"content-type", b"application/grpc")]
    if trailers_only:
        headers.append((b"grpc-status", status))
        return FakeUpstream(ResponseReady(ResponseHead(200, b"", headers), 0, True))
    return FakeUpstream(ResponseReady(ResponseHead(200, b"", headers), None, False), b"\x00\x00\x00\x00\x00",
                        trailers=[(b"grpc-status", status)])


async def call(harness: Harness, path: str = "/svc.Echo/Say", headers: Headers | None = None) -> FakeRequest:
    request = harness.start(path, b"POST", [*GRPC, *(headers or [])])
    request.grpc = True  # what the HTTP/2 codec sets from the content-type
    assert request.task is not None
    await request.task
    return request


async def test_a_local_reply_to_a_grpc_caller_is_a_grpc_status() -> None:
    harness = Harness(one_route(prefix="/svc.Echo/"))
    request = await call(harness, "/other.Service/Call")
    reply = request.reply
    assert reply is not None and reply.head.status == 200 and reply.body == b""
    headers = reply.head.headers
    assert first_header(headers, b"grpc-status") == b"12"  # UNIMPLEMENTED: no route
    assert first_header(headers, b"content-type") == b"application/grpc"
    assert b"destination_not_found" in (first_header(headers, b"grpc-message") or b"")
    assert b"error=destination_not_found" in (first_header(headers, b"proxy-status") or b"")
    assert counter(harness, "sidecar_grpc_requests_total", grpc_status="12") == 1


async def test_a_trailers_only_unavailable_is_retried_under_unavailable() -> None:
    harness = Harness(one_route(route="        retries: {attempts: 2, on: [unavailable], backoff: {base: 1ms}}"))
    harness.seed("backend", grpc_answer(b"0", trailers_only=False), grpc_answer(b"14", trailers_only=True))
    request = harness.start("/svc.Echo/Say", b"POST", GRPC)
    request.grpc = True
    await harness.clock.elapse(0.05)  # the retry's backoff runs on the request path's clock
    assert request.task is not None
    await request.task
    assert request.response is not None and request.response.status == 200
    assert request.trailers == [(b"grpc-status", b"0")]
    assert harness.last["attempts"] == 2
    assert counter(harness, "sidecar_upstream_attempts_total", outcome="failure") == 1
    assert counter(harness, "sidecar_grpc_requests_total", grpc_status="0") == 1


async def test_a_failing_grpc_status_in_the_trailers_is_a_failure_for_the_breaker() -> None:
    harness = Harness(one_route(cluster="    circuit_breaker: {min_requests: 1, failure_ratio: 1.0}"))
    harness.seed("backend", grpc_answer(b"13", trailers_only=False))
    request = await call(harness)
    assert request.response is not None and request.response.status == 200  # relayed as it came
    assert request.trailers == [(b"grpc-status", b"13")]
    endpoint = harness.clusters["backend"].endpoints[0]
    assert endpoint.failures == 1 and endpoint.breaker_state == "open"
    assert counter(harness, "sidecar_grpc_requests_total", grpc_status="13") == 1


async def test_grpc_timeout_caps_the_route_deadline_and_goes_upstream() -> None:
    harness = Harness(one_route(route="        timeout: 5s"))
    upstream = stalled()
    harness.seed("backend", upstream)
    request = harness.start("/svc.Echo/Say", b"POST", [*GRPC, (b"grpc-timeout", b"200m")])
    request.grpc = True
    await harness.clock.elapse(0.01)
    [(sent, _, _)] = upstream.sent
    assert first_header(sent.headers, b"grpc-timeout") in (b"200000000n", b"190000000n", b"200000u", b"200m")
    await harness.clock.elapse(0.25)
    assert request.task is not None
    await request.task
    reply = request.reply
    assert reply is not None and reply.head.status == 200
    assert first_header(reply.head.headers, b"grpc-status") == b"4"  # DEADLINE_EXCEEDED
