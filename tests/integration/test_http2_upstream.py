"""HTTP/2 upstreams (`clusters[].protocol: http2`, prior knowledge) through real sockets: a grpcio server
behind the sidecar, called by a grpcio client (HTTP/2 both sides) and by an HTTP/1.1 client (aiohttp):
unary, server-streaming, client-streaming and bidirectional calls pass, a retry hides an UNAVAILABLE, a
trailers-only error reaches the caller as is, grpc-timeout is honoured, and many concurrent calls share a few
upstream connections.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from tests.integration.admin_client import metric
from tests.integration.raw import outbound_config
from tests.pki import UPSTREAM_ID, make_pki, upstream_context

SERVICE = "svc.Echo"
TIMEOUT = 10.0


class EchoServer:
    """A grpcio server with raw-bytes handlers on 127.0.0.1 (its own threads)."""

    def __init__(self) -> None:
        self.unavailable_left = 0
        self.calls = 0
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                                  options=[("grpc.so_reuseport", 0)])
        handlers = {
            "Say": grpc.unary_unary_rpc_method_handler(self.say),
            "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky),
            "Missing": grpc.unary_unary_rpc_method_handler(self.missing),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Sum": grpc.stream_unary_rpc_method_handler(self.sum),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)

    def say(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.calls += 1
        context.set_trailing_metadata((("echo-trailer", "yes"),))
        return b"echo:" + request

    def flaky(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.calls += 1
            fail = self.unavailable_left > 0
            self.unavailable_left -= 1
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return b"ok"

    def missing(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b""

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        deadline = time.monotonic() + 5
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
        return b"late"

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i

    def sum(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"%d" % sum(int(r) for r in requests)

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield b"re:" + r


def config(upstream: str, route_extra: str = "", cluster_extra: str = "", protocol: str = "http2") -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - name: echo
            match: {{prefix: /svc.Echo/}}
            cluster: backend
            {route_extra}
    clusters:
      - name: backend
        protocol: {protocol}
        connect_timeout: 1s
        endpoints: ["{upstream}"]
        {cluster_extra}
    """


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # grpcio honours http_proxy; the tests talk to 127.0.0.1 directly.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


def _with_channel(port: int, use: Callable[[grpc.Channel], Any]) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return use(channel)


async def run(port: int, use: Callable[[grpc.Channel], Any]) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(_with_channel, port, use), TIMEOUT * 2)


def _status(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def _say_hi(channel: grpc.Channel) -> tuple[bytes, dict[str, str]]:
    """A unary `Say(b"hi")`: the reply and the trailing metadata."""
    reply, call = channel.unary_unary(f"/{SERVICE}/Say").with_call(b"hi", timeout=TIMEOUT)
    return reply, dict(call.trailing_metadata())


async def test_unary_call_with_trailers(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address))
    reply, trailing = await run(running.port(), _say_hi)
    assert reply == b"echo:hi"
    assert trailing.get("echo-trailer") == "yes"
    assert await metric(running, "sidecar_grpc_requests_total", grpc_status="0") == 1


async def test_streaming_calls(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address))

    def use(channel: grpc.Channel) -> tuple[list[bytes], bytes, list[bytes]]:
        counted = list(channel.unary_stream(f"/{SERVICE}/Count")(b"5", timeout=TIMEOUT))
        summed = channel.stream_unary(f"/{SERVICE}/Sum")(iter([b"1", b"2", b"3", b"40"]), timeout=TIMEOUT)
        chat = list(channel.stream_stream(f"/{SERVICE}/Chat")(iter([b"a", b"b" * 100_000, b"c"]), timeout=TIMEOUT))
        return counted, summed, chat

    counted, summed, chat = await run(running.port(), use)
    assert counted == [b"0", b"1", b"2", b"3", b"4"]
    assert summed == b"46"
    assert chat == [b"re:a", b"re:" + b"b" * 100_000, b"re:c"]


async def test_large_messages_pass_both_ways(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address))
    payload = bytes(range(256)) * 8192  # 2 MiB: beyond every initial window

    def use(channel: grpc.Channel) -> bytes:
        return channel.unary_unary(f"/{SERVICE}/Say")(payload, timeout=TIMEOUT)

    assert await run(running.port(), use) == b"echo:" + payload


async def test_a_retry_hides_unavailable(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address, "retries: {attempts: 2, on: [unavailable]}"))
    echo.unavailable_left = 1

    def use(channel: grpc.Channel) -> bytes:
        return channel.unary_unary(f"/{SERVICE}/Flaky")(b"x", timeout=TIMEOUT)

    assert await run(running.port(), use) == b"ok"
    assert echo.calls == 2


async def test_a_trailers_only_error_reaches_the_caller(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address))

    def use(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
        return _status(lambda: channel.unary_unary(f"/{SERVICE}/Missing")(b"x", timeout=TIMEOUT))

    code, details = await run(running.port(), use)
    assert code is grpc.StatusCode.NOT_FOUND and details == "no such thing"
    assert await metric(running, "sidecar_grpc_requests_total", grpc_status="5") == 1


async def test_the_deadline_is_honoured(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address))

    def use(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
        return _status(lambda: channel.unary_unary(f"/{SERVICE}/Slow")(b"x", timeout=0.5))

    started = time.monotonic()
    code, _ = await run(running.port(), use)
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3


async def test_concurrent_calls_share_few_connections(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address))

    def use(channel: grpc.Channel) -> list[bytes]:
        stub = channel.unary_unary(f"/{SERVICE}/Say")
        pending = [stub.future(b"%d" % i, timeout=TIMEOUT) for i in range(50)]
        return [f.result() for f in pending]

    replies = await run(running.port(), use)
    assert replies == [b"echo:%d" % i for i in range(50)]
    assert 1 <= await metric(running, "sidecar_upstream_connections_total", cluster="backend") <= 2


async def test_an_http1_client_reaches_an_http2_upstream(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address))
    message = b"\x00\x00\x00\x00\x05hello"  # a gRPC frame: not compressed, 5 bytes
    headers = {"content-type": "application/grpc", "te": "trailers", "connection": "keep-alive"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.post(running.url(f"/{SERVICE}/Say"), data=message, headers=headers) as reply:
        body = await reply.read()
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/grpc"
    assert body == b"\x00\x00\x00\x00\x0aecho:hello"


class H2Upstream(asyncio.Protocol):
    """An HTTP/2 server on `h2` (prior knowledge): answers each request after `delay` with the connection and
    stream it came on; with `goaway_after`, the first connection sends GOAWAY (naming its first stream) once
    that many requests arrived, answers only that first stream, then closes."""

    def __init__(self, server: H2Server) -> None:
        import h2.config
        import h2.connection

        self.server = server
        self.index = len(server.connections)
        server.connections.append(self)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: list[int] = []
        self.active = 0
        # Streams of a large answer still being sent (bytes left), within the windows the sidecar gives.
        self.big: dict[int, int] = {}
        self.goaway_sent = False
        self.silent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import h2.settings

        self.transport = transport  # type: ignore[assignment]
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams})
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        import h2.events
        from hyperframe.frame import GoAwayFrame

        assert self.transport is not None
        if self.silent:
            return  # a host gone without a FIN or RST: nothing read, nothing answered
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.WindowUpdated):
                self.send_big()
            elif isinstance(event, h2.events.RequestReceived) and dict(event.headers)[b":path"].endswith(b"/big"):
                self.h2.send_headers(event.stream_id, [(b":status", b"200")])
                self.big[event.stream_id] = self.server.big_size
                self.send_big()
            elif isinstance(event, h2.events.RequestReceived):
                self.streams.append(event.stream_id)
                self.active += 1
                self.server.peak = max(self.server.peak, self.active)
                goaway = self.server.goaway_after
                if goaway and self.index == 0 and len(self.streams) == goaway and not self.goaway_sent:
                    self.goaway_sent = True
                    self.transport.write(self.h2.data_to_send())
                    frame = GoAwayFrame(stream_id=0, last_stream_id=self.streams[0], error_code=0)
                    self.transport.write(frame.serialize())
                    asyncio.get_running_loop().call_later(self.server.delay, self.answer, self.streams[0])
                elif not self.goaway_sent:
                    asyncio.get_running_loop().call_later(self.server.delay, self.answer, event.stream_id)
        self.transport.write(self.h2.data_to_send())

    def send_big(self) -> None:
        for stream_id, left in list(self.big.items()):
            while left:
                size = min(left, self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
                if size <= 0:
                    break
                left -= size
                self.server.sent += size
                self.h2.send_data(stream_id, b"x" * size, end_stream=left == 0)
            self.big[stream_id] = left
            if not left:
                del self.big[stream_id]
        assert self.transport is not None
        self.transport.write(self.h2.data_to_send())

    def answer(self, stream_id: int) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        body = b"conn%d-stream%d" % (self.index, stream_id)
        if self.server.grpc_answer:
            # A gRPC answer of declared length, then its trailers (as nginx serving a static answer sends it).
            body = b"\x00" + len(body).to_bytes(4, "big") + body
            self.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                             (b"content-length", b"%d" % len(body))])
            self.h2.send_data(stream_id, body)
            self.h2.send_headers(stream_id, [(b"grpc-status", b"0"), (b"x-trailer", b"kept")], end_stream=True)
        else:
            self.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
            self.h2.send_data(stream_id, body, end_stream=True)
        self.transport.write(self.h2.data_to_send())
        self.active -= 1
        if self.goaway_sent:
            self.transport.close()


class H2Server:
    def __init__(self, max_streams: int = 100, delay: float = 0.0, goaway_after: int = 0) -> None:
        self.max_streams = max_streams
        self.delay = delay
        self.goaway_after = goaway_after
        self.connections: list[H2Upstream] = []
        self.peak = 0
        self.big_size = 0
        self.grpc_answer = False
        self.sent = 0
        self.server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        self.server = await asyncio.get_running_loop().create_server(lambda: H2Upstream(self), "127.0.0.1", 0,
                                                                     ssl=ssl_context)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in self.connections:
                if conn.transport is not None:
                    conn.transport.abort()


async def _get_all(running: Any, count: int) -> list[tuple[int, bytes]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        async def one(i: int) -> tuple[int, bytes]:
            async with session.get(running.url(f"/{SERVICE}/Get{i}")) as reply:
                return reply.status, await reply.read()

        return await asyncio.gather(*(one(i) for i in range(count)))


async def test_trailers_after_a_body_of_declared_length_reach_a_grpc_caller(sidecar: Any) -> None:
    """An HTTP/2 upstream may send content-length, the body, then trailers: the sidecar must not end the
    caller's stream with the body's last byte (grpcio fails a call without trailers)."""
    upstream = H2Server()
    upstream.grpc_answer = True
    address = await upstream.start()
    try:
        running = await sidecar(config(address))
        reply, trailing = await run(running.port(), _say_hi)
        assert reply == b"conn0-stream1"
        assert trailing.get("x-trailer") == "kept"
        assert await metric(running, "sidecar_grpc_requests_total", grpc_status="0") == 1
    finally:
        await upstream.stop()


async def test_max_requests_per_connection_counts_streams(sidecar: Any) -> None:
    """`pool.max_requests_per_connection: 2` on an HTTP/2 cluster: a connection takes two streams, then no
    more, and closes once they are done (the next request opens another)."""
    upstream = H2Server()
    address = await upstream.start()
    try:
        running = await sidecar(config(address, cluster_extra="pool: {max_requests_per_connection: 2}"))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            for i in range(5):
                async with session.get(running.url(f"/{SERVICE}/Get{i}")) as reply:
                    assert reply.status == 200
        assert [len(conn.streams) for conn in upstream.connections] == [2, 2, 1]
        await asyncio.sleep(0.1)
        assert [conn.transport is not None and conn.transport.is_closing() for conn in upstream.connections][:2] \
            == [True, True]
    finally:
        await upstream.stop()


async def test_a_silent_connection_is_found_by_a_ping_and_replaced(sidecar: Any) -> None:
    """An upstream connection that goes silent (no FIN, no RST) would take every new stream and time each one
    out: a stream given up on sends a PING, no answer within connect_timeout closes the connection, and the
    next request opens a fresh one."""
    upstream = H2Server()
    address = await upstream.start()
    try:
        running = await sidecar(config(address, route_extra="timeout: 300ms").replace(
            "connect_timeout: 1s", "connect_timeout: 400ms"))
        replies = await _get_all(running, 1)
        assert replies[0][0] == 200
        upstream.connections[0].silent = True
        assert (await _get_all(running, 1))[0][0] == 504  # timed out on the silent connection
        await asyncio.sleep(0.6)  # the PING went unanswered for connect_timeout: that connection is closed
        replies = await _get_all(running, 2)
        assert [status for status, _ in replies] == [200, 200]
        assert len(upstream.connections) == 2
        assert all(body.startswith(b"conn1-") for _, body in replies)
    finally:
        await upstream.stop()


async def test_a_new_connection_opens_when_the_peer_stream_limit_is_reached(sidecar: Any) -> None:
    upstream = H2Server(max_streams=2, delay=0.3)
    address = await upstream.start()
    try:
        running = await sidecar(config(address))
        replies = await _get_all(running, 5)
        assert [status for status, _ in replies] == [200] * 5
        assert upstream.peak <= 2
        assert len(upstream.connections) == 3
        assert await metric(running, "sidecar_upstream_connections_total", cluster="backend") == 3
    finally:
        await upstream.stop()


async def test_streams_a_goaway_left_unprocessed_are_sent_again(sidecar: Any) -> None:
    upstream = H2Server(delay=0.1, goaway_after=3)
    address = await upstream.start()
    try:
        running = await sidecar(config(address))
        replies = await _get_all(running, 3)
        assert [status for status, _ in replies] == [200] * 3
        bodies = sorted(body for _, body in replies)
        assert bodies[0] == b"conn0-stream1"
        assert all(body.startswith(b"conn1-") for body in bodies[1:])
    finally:
        await upstream.stop()


def tls_cluster(pki: Any, protocol: str) -> str:
    tls = f"tls: {{cert: {pki.cert('client')}, key: {pki.key('client')}, ca: {pki.ca}, expect_identity: {UPSTREAM_ID}}}"
    return f"protocol: {protocol}\n        {tls}"


@pytest.mark.parametrize("protocol", ["http2", "auto"])
async def test_http2_over_tls_offers_alpn_h2(sidecar: Any, tmp_path: Path, protocol: str) -> None:
    pki = make_pki(tmp_path / "pki")
    upstream = H2Server()
    address = await upstream.start(upstream_context(pki))
    try:
        running = await sidecar(outbound_config(address, cluster_extra=tls_cluster(pki, protocol)))
        replies = await _get_all(running, 3)
        assert [status for status, _ in replies] == [200] * 3
        # `http2` waits for its first connection; `auto` learns the protocol from the first handshakes (a burst
        # before then may open a connection each, as HTTP/1.1 would); all are h2 by ALPN.
        assert len(upstream.connections) == 1 if protocol == "http2" else 1 <= len(upstream.connections) <= 3
        for conn in upstream.connections:
            assert conn.transport is not None
            assert conn.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        # Later requests share them (no new connection).
        opened = len(upstream.connections)
        assert [status for status, _ in await _get_all(running, 5)] == [200] * 5
        assert len(upstream.connections) == opened
    finally:
        await upstream.stop()


async def test_an_idle_connection_closes_after_idle_timeout(sidecar: Any) -> None:
    upstream = H2Server()
    address = await upstream.start()
    try:
        running = await sidecar(config(address, cluster_extra="pool: {idle_timeout: 200ms}"))
        assert [status for status, _ in await _get_all(running, 2)] == [200, 200]
        [conn] = upstream.connections
        assert conn.transport is not None
        for _ in range(100):
            if conn.transport.is_closing():
                break
            await asyncio.sleep(0.02)
        assert conn.transport.is_closing()
        assert [status for status, _ in await _get_all(running, 1)] == [200]
        assert len(upstream.connections) == 2
    finally:
        await upstream.stop()


async def _http1_upstream(ssl_context: ssl.SSLContext | None) -> tuple[web.AppRunner, str, list[str]]:
    versions: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        versions.append(f"{request.version.major}.{request.version.minor}")
        return web.Response(text="http1")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}", versions


async def test_auto_over_tls_speaks_http1_when_alpn_chooses_it(sidecar: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    runner, address, versions = await _http1_upstream(upstream_context(pki, alpn=("http/1.1",)))
    try:
        running = await sidecar(outbound_config(address, cluster_extra=tls_cluster(pki, "auto")))
        replies = await _get_all(running, 3)
        assert replies == [(200, b"http1")] * 3
        assert versions == ["1.1"] * 3
    finally:
        await runner.cleanup()


async def test_auto_without_tls_is_http1(sidecar: Any) -> None:
    runner, address, versions = await _http1_upstream(None)
    try:
        running = await sidecar(config(address, protocol="auto"))
        replies = await _get_all(running, 2)
        assert replies == [(200, b"http1")] * 2
        assert versions == ["1.1"] * 2
    finally:
        await runner.cleanup()


async def test_an_upstream_that_does_not_speak_http2_fails_every_waiting_request_as_a_connect_failure(
        sidecar: Any) -> None:
    runner, address, versions = await _http1_upstream(None)
    try:
        running = await sidecar(config(address))
        started = time.monotonic()
        replies = await _get_all(running, 5)
        assert [status for status, _ in replies] == [503] * 5
        assert time.monotonic() - started < 3
        assert versions == []
        assert await metric(running, "sidecar_upstream_attempts_total", cluster="backend",
                            outcome="connect_failure") == 5
    finally:
        await runner.cleanup()


async def test_a_slow_client_holds_the_upstream_window_not_memory(sidecar: Any) -> None:
    upstream = H2Server()
    upstream.big_size = 64 * 1024 * 1024
    address = await upstream.start()
    try:
        running = await sidecar(config(address))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT * 3)) as session, \
                session.get(running.url(f"/{SERVICE}/big")) as reply:
            assert reply.status == 200
            await asyncio.sleep(0.5)  # not reading: the sidecar stops giving the upstream window back
            held = upstream.sent
            assert held < upstream.big_size // 4
            await asyncio.sleep(0.2)
            assert upstream.sent == held
            received = 0
            async for piece in reply.content.iter_any():
                received += len(piece)
        assert received == upstream.big_size == upstream.sent
    finally:
        await upstream.stop()
