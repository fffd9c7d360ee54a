"""Fake streams for the stages' unit tests: a downstream request and upstream attempts with no sockets.

The stages see only `proxy.stream`'s interfaces, so these stand in for the HTTP/1 codec. Upstream streams
are handed out by seeding the endpoint's pool (as a finished attempt returns one to it). They subclass
native classes, which the compiled build does not allow from test code: the tests using them run in the
interpreted pass only (the compiled pass runs the same stages under the real codec in the integration
tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

import proxy.stream
from proxy.app import server_settings
from proxy.clock import ManualClock
from proxy.config.load import parse_config
from proxy.discovery.static import static_endpoints
from proxy.errors import FailureKind, UpstreamError
from proxy.filters.trace import TracePropagator
from proxy.local_reply import LocalReply
from proxy.message import Headers, RequestHead, ResponseHead
from proxy.outbound import build_router
from proxy.routing.table import RouteTable
from proxy.stages.path import RequestPath
from proxy.stream import (
    BodySink,
    ReadControl,
    RequestBody,
    RequestStream,
    ResponseReady,
    TunnelEnd,
    TunnelPeer,
    UpstreamStream,
)
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.record import RecordSink, RequestRecord
from proxy.upstream.cluster import Cluster

COMPILED = not proxy.stream.__file__.endswith(".py")


class FakeRequest(RequestStream):
    """A downstream request; what the stages wrote back is kept in `status`, `body`, `trailers`, `reply`."""

    def __init__(self, head: RequestHead, body: RequestBody | None = None, started_at: float = 0.0) -> None:
        super().__init__(head, body, b"10.1.1.1", started_at)
        self.reply: LocalReply | None = None
        self.response: ResponseHead | None = None
        self.out = bytearray()
        self.trailers: Headers | None = None
        self.continued = False

    @property
    def write_paused(self) -> bool:
        return False

    @property
    def reader(self) -> ReadControl:
        return _NoReads()

    @property
    def tunnel_end(self) -> TunnelEnd:
        raise AssertionError("no tunnel in these tests")

    def send_local(self, reply: LocalReply) -> None:
        if self.response_started:
            self.abort()
            return
        self.reply = reply
        self.response_started = True
        self.response_status = reply.head.status
        self.bytes_out += len(reply.body)
        self.response_done = True

    def send_continue(self) -> None:
        self.continued = True

    def start_response(self, head: ResponseHead, content_length: int | None, no_body: bool,
                       first: bytes = b"") -> None:
        self.response = head
        self.response_started = True
        self.response_status = head.status
        self.write_body(first)

    def write_body(self, data: bytes) -> None:
        self.out += data
        self.bytes_out += len(data)

    def end_response(self, trailers: Headers | None = None) -> None:
        self.trailers = trailers
        self.response_done = True

    def abort(self) -> None:
        self.aborted = True
        self.response_done = True

    def start_tunnel(self, peer: TunnelPeer) -> None:
        raise AssertionError("no tunnel in these tests")


class _NoReads:
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class WholeBody(RequestBody):
    """A request body that had fully arrived before the request was handed over."""

    def __init__(self, data: bytes) -> None:
        super().__init__(len(data))
        self.data = data
        self.complete = True
        self.received = len(data)
        self.taken = False

    def take_complete(self) -> bytes | None:
        if self.taken:
            return None
        self.taken = True
        return self.data

    def can_replay(self) -> bool:
        return True

    def keep_for_replay(self, limit: int) -> None:
        pass

    def attach(self, sink: BodySink) -> None:
        raise AssertionError("a whole body is sent with the head")

    def reattach(self, sink: BodySink) -> bool:
        raise AssertionError("a whole body is sent with the head")

    def detach(self) -> None:
        pass


class FakeUpstream(UpstreamStream):
    """One upstream stream. `answer` is what `response_head` does: a `ResponseReady` to return at once, an
    `UpstreamError` to raise, or None to wait until `arrive()` (or forever)."""

    def __init__(self, answer: ResponseReady | UpstreamError | None, body: bytes = b"",
                 trailers: Headers | None = None) -> None:
        self.context = "cluster c: endpoint fake"
        self.closed = False
        self.requests_sent = 0
        self.rx = 0
        self.tx = 0
        self.on_idle: Callable[[Any], None] | None = None
        self.on_lost: Callable[[Any], None] | None = None
        self.answer = answer
        self.body = body
        self._trailers = trailers
        self.sent: list[tuple[RequestHead, bytes, bytes | None]] = []
        self.aborted = False
        self.finished = False
        self._waiter: asyncio.Future[ResponseReady] | None = None

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    def send(self, head: RequestHead, extra: tuple[bytes, bytes], length: int | None, whole: bytes | None,
             trailers: Headers | None, upgrade: bool) -> None:
        self.requests_sent += 1
        self.sent.append((head, extra[1], whole))

    async def response_head(self) -> ResponseReady:
        if isinstance(self.answer, UpstreamError):
            raise self.answer
        if self.answer is not None:
            return self.answer
        self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter

    def take_body(self) -> bytes:
        return self.body

    def attach(self, downstream: RequestStream) -> bool:
        return True

    async def response_done(self) -> None:
        return None

    def finish(self, reusable: bool) -> None:
        self.finished = True

    def detach(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def set_body_reader(self, reader: ReadControl | None) -> None:
        pass

    def start_tunnel(self, downstream: TunnelEnd) -> None:
        raise AssertionError("no tunnel in these tests")

    def write_body(self, data: bytes) -> None:
        pass

    def end_body(self, trailers: Headers | None) -> None:
        pass

    def tunnel_write(self, data: bytes) -> None:
        pass

    def tunnel_eof(self) -> None:
        pass

    def tunnel_close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def ok(status: int = 200, body: bytes = b"ok", headers: Headers | None = None) -> FakeUpstream:
    """An upstream stream that answers at once."""
    head = ResponseHead(status, b"", list(headers or []))
    return FakeUpstream(ResponseReady(head, len(body), False), body)


def failing(kind: FailureKind = FailureKind.RESET) -> FakeUpstream:
    return FakeUpstream(UpstreamError(kind, f"cluster c: {kind.name.lower()}"))


def stalled() -> FakeUpstream:
    """An upstream that never sends a response head."""
    return FakeUpstream(None)


class Records(RecordSink):
    """Keeps what each finished request's record said."""

    def __init__(self) -> None:
        self.seen: list[dict[str, object]] = []

    def record(self, request: RequestRecord) -> None:
        self.seen.append({name: getattr(request, name) for name in (
            "listener", "route", "cluster", "endpoint", "attempts", "status", "reset", "cause", "bytes_in",
            "bytes_out", "duration", "upstream_time", "request_id", "trace_id", "span_id", "peer_identity")}
                         | {"sidecar_time": request.sidecar_time})


class Harness:
    """A listener's `RequestPath` built from YAML, on a `ManualClock`, with its upstreams seeded by hand."""

    def __init__(self, yaml: str) -> None:
        self.clock = ManualClock()
        loaded = parse_config(yaml.encode(), Path("/tmp/sidecar.yaml"))
        config = loaded.config
        self.metrics = Metrics(CollectorRegistry())
        self.clusters: dict[str, Cluster] = {}
        for cluster_config in config.clusters:
            cluster = Cluster(cluster_config, self.metrics, self.clock)
            cluster.set_endpoints(static_endpoints(cluster_config.endpoints or []))
            self.clusters[cluster_config.name] = cluster
        listener = config.listeners[0]
        router = build_router(listener.name, RouteTable.from_config(listener.routes), self.clusters,
                              self.metrics, self.clock)
        trace = TracePropagator.from_config(["w3c"], 0.0, self.clock.random)
        self.path = RequestPath(listener.name, server_settings(listener), router, trace, self.metrics, self.clock)
        self.records = Records()
        self.path.sinks = (*self.path.sinks, self.records)

    def seed(self, cluster: str, *streams: FakeUpstream, endpoint: int = 0) -> None:
        """Put upstream streams in an endpoint's pool, as if earlier attempts had returned them (the last one
        seeded is handed out first)."""
        pool = self.clusters[cluster].endpoints[endpoint].pool
        for stream in streams:
            pool._release(stream)

    def start(self, path: str = "/", method: bytes = b"GET", headers: Headers | None = None,
              body: bytes | None = None) -> FakeRequest:
        head = RequestHead(method=method, path=path, query=b"", authority="svc", host_header=b"svc",
                           headers=list(headers or []))
        request = FakeRequest(head, WholeBody(body) if body is not None else None, self.clock.now())
        request.task = asyncio.get_running_loop().create_task(self.path.handle(request))
        return request

    async def serve(self, path: str = "/", method: bytes = b"GET", headers: Headers | None = None,
                    body: bytes | None = None) -> FakeRequest:
        request = self.start(path, method, headers, body)
        assert request.task is not None
        await request.task
        return request

    @property
    def last(self) -> dict[str, object]:
        return self.records.seen[-1]


def one_route(route: str = "", cluster: str = "", endpoints: str = '["10.0.0.1:80"]', prefix: str = "/",
              listener: str = "") -> str:
    """A config of one listener `out` (plus the `listener` keys, indented) with one route `api` (plus the
    `route` keys) to one cluster `backend` (plus the `cluster` keys)."""
    return f"""
admin: {{address: "127.0.0.1:0"}}
listeners:
  - name: out
    address: "127.0.0.1:0"
{listener}
    routes:
      - name: api
        match: {{prefix: {prefix}}}
        cluster: backend
{route}
clusters:
  - name: backend
    endpoints: {endpoints}
{cluster}
"""


def counter(harness: Harness, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels, as /metrics would show it."""
    return sum(sample.value for family in harness.metrics.registry.collect() for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))
