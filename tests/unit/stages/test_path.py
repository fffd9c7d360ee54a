"""The request path of a listener, with fake streams: edge, routing, cancellation and the request record."""

from __future__ import annotations

import asyncio

import pytest

from proxy.local_reply import Cause, local_reply
from proxy.stream import BODY_ERROR, CLIENT_GONE, STREAM_IDLE
from tests.unit.stages.fakes import COMPILED, Harness, counter, ok, one_route, stalled

pytestmark = pytest.mark.skipif(COMPILED, reason="fake streams subclass native classes (interpreted pass only)")

CONFIG = one_route(prefix="/api", listener="    http: {max_requests_in_flight: 2}")


async def test_a_proxied_request_ends_with_one_record_naming_what_served_it() -> None:
    harness = Harness(CONFIG)
    upstream = ok(body=b"hello")
    harness.seed("backend", upstream)
    request = await harness.serve("/api/x", method=b"POST", body=b"12345")
    assert request.response is not None and request.response.status == 200 and bytes(request.out) == b"hello"
    assert len(harness.records.seen) == 1
    record = harness.last
    assert record["listener"] == "out" and record["route"] == "api" and record["cluster"] == "backend"
    assert record["endpoint"] == "10.0.0.1:80" and record["attempts"] == 1 and record["status"] == 200
    assert record["bytes_in"] == 5 and record["bytes_out"] == 5 and record["cause"] is None
    assert record["reset"] is False and record["peer_identity"] == ""
    assert record["request_id"] == request.request_id != b""
    assert len(record["trace_id"]) == 32 and len(record["span_id"]) == 16  # type: ignore[arg-type]
    # The attempt's span is the parent the upstream saw.
    sent_head = upstream.sent[0][0]
    assert (b"traceparent", b"00-%s-%s-00" % (record["trace_id"], record["span_id"])) in sent_head.headers


async def test_the_edge_stamps_one_request_id_and_the_forwarding_headers() -> None:
    harness = Harness(CONFIG)
    upstream = ok()
    harness.seed("backend", upstream)
    request = await harness.serve("/api", headers=[(b"x-request-id", b""), (b"x-request-id", b"abc"),
                                                   (b"x-forwarded-for", b"1.2.3.4")])
    assert request.request_id == b"abc"
    sent = upstream.sent[0][0].headers
    assert [value for name, value in sent if name == b"x-request-id"] == [b"abc"]
    assert (b"x-forwarded-for", b"1.2.3.4, 10.1.1.1") in sent and (b"x-forwarded-proto", b"http") in sent


async def test_no_route_is_a_404_counted_for_the_listener() -> None:
    harness = Harness(CONFIG)
    request = await harness.serve("/other")
    assert request.reply is not None and request.reply.head.status == 404
    assert harness.last["status"] == 404 and harness.last["cause"] is Cause.NO_ROUTE
    assert harness.last["route"] == "" and request.request_id  # local replies carry a request id too
    assert counter(harness, "sidecar_requests_total") == 1
    assert counter(harness, "sidecar_requests_total", route="", code="404") == 1


async def test_the_listener_cap_answers_503_before_any_work() -> None:
    harness = Harness(CONFIG)
    harness.seed("backend", stalled(), stalled())
    first, second = harness.start("/api"), harness.start("/api")
    await asyncio.sleep(0)
    third = await harness.serve("/api")
    assert third.reply is not None and third.reply.head.status == 503
    assert harness.last["cause"] is Cause.LISTENER_LIMIT
    for request in (first, second):
        request.cancel(CLIENT_GONE)
    await asyncio.gather(first.task, second.task)  # type: ignore[arg-type]
    assert harness.path.in_flight == 0


async def test_a_client_that_leaves_cancels_the_attempt_and_counts_499() -> None:
    harness = Harness(CONFIG)
    upstream = stalled()
    harness.seed("backend", upstream)
    request = harness.start("/api")
    await asyncio.sleep(0)
    request.response_done = True  # the codec marks a gone client's request done before cancelling it
    request.cancel(CLIENT_GONE)
    await request.task  # type: ignore[misc]
    assert upstream.aborted and request.reply is None
    assert harness.last["status"] == 499
    # Nobody's failure: the breaker and the attempt metrics do not count it.
    assert harness.clusters["backend"].endpoints[0].in_flight == 0
    assert counter(harness, "sidecar_upstream_attempts_total") == 0


async def test_stream_idle_answers_504_and_counts_as_the_upstreams_timeout() -> None:
    harness = Harness(CONFIG)
    harness.seed("backend", stalled())
    request = harness.start("/api")
    await asyncio.sleep(0)
    request.cancel(STREAM_IDLE, local_reply(Cause.TIMEOUT, "stream idle timeout"))
    await request.task  # type: ignore[misc]
    assert request.reply is not None and request.reply.head.status == 504
    assert harness.last["status"] == 504 and harness.last["cause"] is Cause.TIMEOUT
    assert counter(harness, "sidecar_upstream_attempts_total", outcome="timeout") == 1


async def test_a_stronger_reason_replaces_a_pending_one_and_a_weaker_one_is_ignored() -> None:
    harness = Harness(CONFIG)
    harness.seed("backend", stalled())
    request = harness.start("/api")
    await asyncio.sleep(0)
    request.cancel(STREAM_IDLE, local_reply(Cause.TIMEOUT, "stream idle timeout"))
    request.cancel(BODY_ERROR, local_reply(Cause.BAD_REQUEST, "bad chunk"))
    request.cancel(STREAM_IDLE, local_reply(Cause.TIMEOUT, "again"))
    await request.task  # type: ignore[misc]
    assert request.reply is not None and request.reply.head.status == 400
    assert harness.last["cause"] is Cause.BAD_REQUEST


async def test_a_body_error_after_the_response_started_resets_the_client() -> None:
    harness = Harness(CONFIG)
    harness.seed("backend", stalled())
    request = harness.start("/api")
    await asyncio.sleep(0)
    request.response_started = True
    request.response_status = 200
    request.cancel(BODY_ERROR, local_reply(Cause.BAD_REQUEST))
    await request.task  # type: ignore[misc]
    assert request.aborted and request.reply is None
    assert harness.last["reset"] is True and harness.last["status"] == 499


async def test_refused_requests_get_a_request_id_and_a_record() -> None:
    harness = Harness(CONFIG)
    request = harness.start("/api")
    request.task.cancel()  # type: ignore[union-attr]
    harness.path.refuse(request, local_reply(Cause.BODY_TOO_LARGE))
    assert request.reply is not None and request.reply.head.status == 413 and request.request_id
    assert harness.last["status"] == 413 and harness.last["cause"] is Cause.BODY_TOO_LARGE
