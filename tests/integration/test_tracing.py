"""Span export through real sockets: the sidecar's spans arrive at a real OTLP/HTTP receiver (an aiohttp server
decoding `ExportTraceServiceRequest` with opentelemetry-proto), and the ids in them are the ones on the wire.

Checked: span names and kinds, the server span's parent (the caller's span) and the client spans' parent (the
server span) across a retry, the traceparent the upstream received naming the client span, the HTTP semantic
convention attributes and the sidecar's own, the resource (node.service, node.namespace), a local reply,
unsampled requests exporting nothing, and a collector that is down or stuck costing requests nothing while
the dropped spans are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from proxy.telemetry import tracing
from tests.conftest import free_port
from tests.integration.admin_client import metric
from tests.integration.upstreams import start_upstream

TIMEOUT = aiohttp.ClientTimeout(total=10)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self.stuck = False
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def receive(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.stuck:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 30)
        body = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append({
                        "name": span.name, "kind": span.kind, "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        "status": span.status.code, "resource": resource,
                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                    })
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


@pytest.fixture(autouse=True)
def quick_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "EXPORT_INTERVAL", 0.2)  # batches go every 5 s by default


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    receiver = Collector()
    await receiver.start()
    yield receiver
    receiver.release.set()
    assert receiver.runner is not None
    await receiver.runner.cleanup()


def config(upstream: str, endpoint: str, sampling: float = 1.0, route_extra: str = "") -> str:
    return f"""
    node: {{service: payment-service, namespace: shop}}
    admin: {{address: "127.0.0.1:0"}}
    tracing: {{sampling: {sampling}, propagation: [w3c, b3], otlp: {{endpoint: "{endpoint}"}}}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - name: pay
            match: {{prefix: /pay}}
            cluster: backend
            {route_extra}
    clusters:
      - name: backend
        endpoints: ["{upstream}"]
    """


async def get(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url, headers=headers) as reply:
        await reply.read()
        return reply.status


async def eventually(check: Callable[[], Awaitable[bool] | bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_sampled_request_exports_its_server_span_and_client_span_with_the_wire_ids(
        sidecar: Any, collector: Collector) -> None:
    upstream = await start_upstream()
    try:
        running = await sidecar(config(upstream.address, collector.url))
        traceparent = f"00-{TRACE}-{CALLER_SPAN}-01"
        status = await get(running.url("/pay?x=1"), {"traceparent": traceparent, "user-agent": "checkout/1.0"})
        assert status == 200
        await eventually(lambda: len(collector.spans) == 2)
        server, client = sorted(collector.spans, key=lambda s: s["kind"])
        assert (server["kind"], client["kind"]) == (SERVER, CLIENT)
        assert server["trace_id"] == client["trace_id"] == TRACE
        assert server["parent"] == CALLER_SPAN and client["parent"] == server["span_id"]
        # The upstream saw our client span as its parent: the exported ids are the ones on the wire.
        sent = upstream.requests[0].headers["traceparent"]
        assert sent == f"00-{TRACE}-{client['span_id']}-01"
        assert upstream.requests[0].headers["b3"] == f"{TRACE}-{client['span_id']}-1-{server['span_id']}"
        assert server["name"] == "GET pay" and client["name"] == "GET"
        assert server["start"] <= client["start"] <= client["end"] <= server["end"]
        assert abs(server["start"] / 1e9 - time.time()) < 30
        attributes = server["attributes"]
        assert attributes["http.request.method"] == "GET" and attributes["url.path"] == "/pay"
        assert attributes["url.query"] == "x=1" and attributes["http.response.status_code"] == 200
        assert attributes["user_agent.original"] == "checkout/1.0" and attributes["server.address"] == "127.0.0.1"
        assert attributes["sidecar.route"] == "pay" and attributes["sidecar.cluster"] == "backend"
        assert attributes["sidecar.endpoint"] == upstream.address and attributes["sidecar.attempts"] == 1
        assert attributes["sidecar.request_id"]
        assert client["attributes"]["server.port"] == upstream.port
        assert client["attributes"]["sidecar.attempt"] == 1 and client["attributes"]["sidecar.outcome"] == "success"
        assert server["resource"]["service.name"] == "payment-service"
        assert server["resource"]["service.namespace"] == "shop"
    finally:
        await upstream.stop()


async def test_a_retry_makes_two_client_spans_under_one_server_span(sidecar: Any, collector: Collector) -> None:
    answers = iter([503, 200])

    async def flaky(request: web.Request) -> web.StreamResponse:
        return web.Response(status=next(answers, 200), text="x")

    upstream = await start_upstream(flaky)
    try:
        running = await sidecar(config(upstream.address, collector.url,
                                       route_extra="retries: {attempts: 2, on: [5xx], backoff: {base: 1ms, max: 2ms}}"))
        assert await get(running.url("/pay")) == 200
        await eventually(lambda: len(collector.spans) == 3)
        [server] = [s for s in collector.spans if s["kind"] == SERVER]
        clients = sorted((s for s in collector.spans if s["kind"] == CLIENT), key=lambda s: s["start"])
        assert [c["parent"] for c in clients] == [server["span_id"]] * 2
        assert [c["attributes"]["sidecar.attempt"] for c in clients] == [1, 2]
        assert [c["attributes"]["http.response.status_code"] for c in clients] == [503, 200]
        assert clients[0]["attributes"]["error.type"] == "503" and clients[0]["status"] == 2  # STATUS_CODE_ERROR
        assert clients[1]["attributes"]["http.request.resend_count"] == 1
        assert server["attributes"]["sidecar.attempts"] == 2
        # Each attempt sent its own span id upstream.
        sent = [r.headers["traceparent"].split("-")[2] for r in upstream.requests]
        assert sent == [c["span_id"] for c in clients]
    finally:
        await upstream.stop()


async def test_a_local_reply_is_a_server_span_with_its_cause(sidecar: Any, collector: Collector) -> None:
    running = await sidecar(config("127.0.0.1:1", collector.url))
    assert await get(running.url("/nowhere")) == 404
    await eventually(lambda: len(collector.spans) == 1)
    [span] = collector.spans
    assert span["kind"] == SERVER and span["parent"] == ""
    assert span["attributes"]["sidecar.local_reply"] == "destination_not_found"
    assert span["attributes"]["http.response.status_code"] == 404


async def test_unsampled_requests_export_nothing(sidecar: Any, collector: Collector) -> None:
    upstream = await start_upstream()
    try:
        running = await sidecar(config(upstream.address, collector.url, sampling=0.0))
        for _ in range(5):
            assert await get(running.url("/pay")) == 200
        # An incoming sampled flag is honoured even at 0 % sampling (parent-based).
        assert await get(running.url("/pay"), {"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}) == 200
        assert await get(running.url("/pay"), {"traceparent": f"00-{TRACE[::-1]}-{CALLER_SPAN}-00"}) == 200
        await eventually(lambda: len(collector.spans) == 2)
        await asyncio.sleep(0.5)  # two more export intervals: nothing else comes
        assert {s["trace_id"] for s in collector.spans} == {TRACE}
    finally:
        await upstream.stop()


async def test_a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted(sidecar: Any) -> None:
    upstream = await start_upstream()
    try:
        running = await sidecar(config(upstream.address, f"http://127.0.0.1:{free_port()}/v1/traces"))
        started = time.monotonic()
        for _ in range(20):
            assert await get(running.url("/pay")) == 200
        assert time.monotonic() - started < 5
        await eventually(lambda: _dropped(running, 40), seconds=20)
    finally:
        await upstream.stop()


async def test_a_stuck_collector_fills_the_queue_and_new_spans_are_dropped(sidecar: Any, collector: Collector,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "MAX_QUEUE", 5)
    monkeypatch.setattr(tracing, "EXPORT_TIMEOUT", 1.0)
    collector.stuck = True
    upstream = await start_upstream()
    try:
        running = await sidecar(config(upstream.address, collector.url))
        await get(running.url("/pay"))
        await eventually(lambda: collector.requests >= 1)  # the export thread is now waiting on the collector
        started = time.monotonic()
        for _ in range(30):
            assert await get(running.url("/pay")) == 200
        assert time.monotonic() - started < 5
        sink = running.app.span_sink
        assert sink is not None and len(sink._queue) <= 5
        assert await metric(running, "sidecar_trace_spans_dropped_total") >= 2 * 25
    finally:
        await upstream.stop()


async def _dropped(running: Any, at_least: int) -> bool:
    return await metric(running, "sidecar_trace_spans_dropped_total") >= at_least

