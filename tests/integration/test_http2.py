"""HTTP/2 towards clients (issue 19, first part): real peers (curl, nghttp, h2load, a raw `h2` client) through the
sidecar to an HTTP/1.1 aiohttp upstream.

Prior-knowledge h2c and HTTP/1.1 on one port, ALPN h2 under TLS, many streams per connection, flow control
both ways, trailers, RST_STREAM, GOAWAY on drain, PING, and the protections (each answered with RST_STREAM
or GOAWAY, counted in sidecar_http2_protections_total, the sidecar still serving).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from aiohttp import web
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame

from tests.integration.upstreams import Upstream, start_upstream
from tests.pki import Pki, spiffe

CURL = shutil.which("curl")
H2LOAD = shutil.which("h2load")


def config(endpoint: str, http2: str = "") -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        http:
          max_request_headers: 8KiB
          {http2}
        routes:
          - name: all
            match: {{prefix: /}}
            cluster: backend
    clusters:
      - name: backend
        endpoints: ["{endpoint}"]
    """


@dataclass
class Env:
    running: Any
    upstream: Upstream

    @property
    def port(self) -> int:
        return int(self.running.port())

    def metric(self, name: str, **labels: str) -> float:
        registry = self.running.app.metrics.registry
        value = registry.get_sample_value(name, labels)
        return float(value or 0.0)


@pytest.fixture
async def env(sidecar: Callable[[str], Awaitable[object]]) -> AsyncIterator[Env]:
    upstream = await start_upstream()
    running = await sidecar(config(upstream.address))
    yield Env(running, upstream)
    await upstream.stop()


async def run(*argv: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err


# -- a raw HTTP/2 client (the h2 state machine over a socket) -------------------------------------------


class RawClient:
    """An HTTP/2 client on asyncio streams, for what curl cannot do (resets, floods, not reading)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: dict[int, int] | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events: list[h2.events.Event] = []
        # Every frame the server sent, parsed on its own (h2 stops reading after a GOAWAY; a drain's frames
        # after it still matter).
        self.frames: list[Frame] = []
        self._raw = b""
        self.closed = False
        self.flush()

    @classmethod
    async def open(cls, port: int, settings: dict[int, int] | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, settings)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def read_some(self, timeout: float = 5.0) -> list[h2.events.Event]:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, TimeoutError):
            data = b""
        if not data:
            self.closed = True
            return []
        self._raw += data
        while len(self._raw) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._raw[:9]))
            if len(self._raw) < 9 + length:
                break
            frame.parse_body(memoryview(self._raw[9:9 + length]))
            self._raw = self._raw[9 + length:]
            self.frames.append(frame)
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return []
        self.events.extend(events)
        self.flush()
        return events

    def frames_of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind) and (stream_id is None or f.stream_id == stream_id)]

    def frame_ended(self, stream_id: int) -> bool:
        return any("END_STREAM" in f.flags for f in self.frames if f.stream_id == stream_id
                   and isinstance(f, DataFrame | HeadersFrame))

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            remaining = deadline - loop.time()
            assert remaining > 0, f"timed out; events: {self.events[-10:]}"
            await self.read_some(remaining)
            if self.closed:
                return

    def request(self, path: str, method: str = "GET", end: bool = True,
                extra: list[tuple[bytes, bytes]] | None = None) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", b"svc"),
                   (b":path", path.encode())] + (extra or [])
        self.conn.send_headers(stream_id, headers, end_stream=end)
        self.flush()
        return stream_id

    def of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)
                and (stream_id is None or getattr(e, "stream_id", None) == stream_id)]

    def ended(self, stream_id: int) -> bool:
        return bool(self.of(h2.events.StreamEnded, stream_id) or self.of(h2.events.StreamReset, stream_id))

    def status(self, stream_id: int) -> int:
        for event in self.of(h2.events.ResponseReceived, stream_id):
            return int(dict(event.headers)[b":status"])
        return 0

    def body(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.of(h2.events.DataReceived, stream_id))

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        found = self.of(h2.events.ConnectionTerminated)
        return found[0] if found else None

    def close(self) -> None:
        self.writer.close()


# -- curl -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(CURL is None, reason="needs curl")
async def test_prior_knowledge_h2c_and_http1_on_the_same_port(env: Env) -> None:
    code, out, err = await run("curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-H", "x-test: one",
                               f"http://127.0.0.1:{env.port}/h2/path?q=1")
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    assert b"x-request-id:" in head.lower()
    echoed = json.loads(body)
    assert echoed["path"] == "/h2/path" and echoed["query"] == "q=1"
    assert echoed["headers"]["x-test"] == "one"
    assert echoed["headers"]["host"] == f"127.0.0.1:{env.port}"
    code, out, err = await run("curl", "-sS", "--http1.1", "-D", "-", f"http://127.0.0.1:{env.port}/h1")
    assert code == 0, err
    assert out.startswith(b"HTTP/1.1 200"), out
    assert env.metric("sidecar_requests_total", listener="outbound", route="all", cluster="backend",
                      code="200") == 2


@pytest.mark.skipif(CURL is None, reason="needs curl")
async def test_post_body_and_response_through_h2c(env: Env) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: many windows' worth
    code, out, err = await run("curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-",
                               f"http://127.0.0.1:{env.port}/upload", stdin=body)
    assert code == 0, err
    assert json.loads(out)["body_length"] == len(body)
    assert env.upstream.bodies[-1] == body
    # The HTTP/2 connection's bytes count like HTTP/1's: at least the body each way (frames add a little).
    received = env.metric("sidecar_downstream_bytes_total", listener="outbound", direction="rx")
    sent = env.metric("sidecar_downstream_bytes_total", listener="outbound", direction="tx")
    assert len(body) < received < len(body) * 1.05 and 0 < sent < 10_000, (received, sent)


@pytest.mark.skipif(CURL is None, reason="needs curl")
async def test_h2_by_alpn_on_a_tls_listener(sidecar: Callable[[str], Awaitable[object]], tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    cert, key = pki.leaf("server", spiffe("server"), dns_names=["localhost"])
    upstream = await start_upstream()
    running: Any = await sidecar(config(upstream.address).replace(
        "        routes:", f"        tls: {{cert: {cert}, key: {key}}}\n        routes:", 1))
    try:
        url = f"https://localhost:{running.port()}/tls"
        code, out, err = await run("curl", "-sS", "-k", "--http2", "-D", "-", "--resolve",
                                   f"localhost:{running.port()}:127.0.0.1", url)
        assert code == 0, err
        assert out.startswith(b"HTTP/2 200"), out[:100]
        assert json.loads(out.partition(b"\r\n\r\n")[2])["path"] == "/tls"
        code, out, err = await run("curl", "-sS", "-k", "--http1.1", "-D", "-", "--resolve",
                                   f"localhost:{running.port()}:127.0.0.1", url)
        assert code == 0, err
        assert out.startswith(b"HTTP/1.1 200"), out[:100]
    finally:
        await upstream.stop()


@pytest.mark.skipif(H2LOAD is None, reason="needs h2load (nghttp2-client)")
async def test_many_concurrent_streams_on_one_connection(env: Env) -> None:
    code, out, err = await run("h2load", "-n", "400", "-c", "1", "-m", "50", f"http://127.0.0.1:{env.port}/load")
    assert code == 0, err
    text = out.decode()
    assert "400 succeeded, 0 failed, 0 errored" in text, text
    assert "status codes: 400 2xx" in text, text
    assert env.metric("sidecar_requests_total", listener="outbound", route="all", cluster="backend",
                      code="200") == 400


async def test_raw_client_many_streams_trailers_and_ping(env: Env) -> None:
    client = await RawClient.open(env.port)
    try:
        ids = [client.request(f"/s/{i}") for i in range(30)]
        post = client.request("/trailers", "POST", end=False, extra=[(b"te", b"trailers")])
        client.conn.send_data(post, b"hello")
        client.conn.send_headers(post, [(b"x-checksum", b"abc")], end_stream=True)
        client.conn.ping(b"12345678")
        client.flush()
        await client.until(lambda: all(client.ended(i) for i in [*ids, post])
                           and bool(client.of(h2.events.PingAckReceived)))
        assert [client.status(i) for i in ids] == [200] * 30
        assert json.loads(client.body(ids[7]))["path"] == "/s/7"
        echoed = json.loads(client.body(post))
        assert echoed["body_length"] == 5 and echoed["headers"]["te"] == "trailers"
        assert client.of(h2.events.PingAckReceived)[0].ping_data == b"12345678"
    finally:
        client.close()


@pytest.fixture
async def slow_env(sidecar: Callable[[str], Awaitable[object]]) -> AsyncIterator[Env]:
    """An upstream whose /slow answers after 0.5 s and whose /hang never answers (until cancelled)."""
    gone: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            if request.path == "/slow":
                await asyncio.sleep(0.5)
            elif request.path == "/hang":
                # aiohttp does not cancel a handler whose client left: watch the connection instead.
                for _ in range(600):
                    if request.transport is None or request.transport.is_closing():
                        gone.append(request.path)
                        break
                    await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            gone.append(request.path)
            raise
        return web.Response(text=request.path)

    upstream = await start_upstream(handler)
    running = await sidecar(config(upstream.address))
    env = Env(running, upstream)
    env.gone = gone  # type: ignore[attr-defined]
    yield env
    await upstream.stop()


async def test_client_reset_cancels_the_upstream_request(slow_env: Env) -> None:
    client = await RawClient.open(slow_env.port)
    try:
        stream_id = client.request("/hang")
        await asyncio.sleep(0.2)
        client.conn.reset_stream(stream_id)
        ok = client.request("/fast")
        await client.until(lambda: client.ended(ok))
        assert client.status(ok) == 200
        for _ in range(50):
            if slow_env.metric("sidecar_requests_total", listener="outbound", route="all", cluster="backend",
                               code="499"):
                break
            await asyncio.sleep(0.02)
        assert slow_env.metric("sidecar_requests_total", listener="outbound", route="all", cluster="backend",
                               code="499") == 1
        for _ in range(50):
            if slow_env.gone:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        assert slow_env.gone == ["/hang"]  # type: ignore[attr-defined]
    finally:
        client.close()


async def test_drain_sends_goaway_and_in_flight_streams_finish(slow_env: Env) -> None:
    client = await RawClient.open(slow_env.port)
    try:
        first = client.request("/slow")
        second = client.request("/slow")
        await asyncio.sleep(0.1)
        slow_env.running.app.listeners["outbound"].drain()
        await client.until(lambda: bool(client.frames_of(GoAwayFrame)))
        goaway = client.frames_of(GoAwayFrame)[0]
        assert goaway.last_stream_id == second and goaway.error_code == 0
        await client.until(lambda: client.frame_ended(first) and client.frame_ended(second))
        bodies = b"".join(f.data for f in client.frames_of(DataFrame))
        assert bodies == b"/slow/slow"
        await client.until(lambda: client.closed, timeout=3.0)
        assert client.closed, "the connection closes once its streams are done"
    finally:
        client.close()


# -- protections ------------------------------------------------------------------------------------------


async def assert_still_serving(env: Env) -> None:
    client = await RawClient.open(env.port)
    try:
        stream_id = client.request("/after")
        await client.until(lambda: client.ended(stream_id))
        assert client.status(stream_id) == 200
    finally:
        client.close()


def protections(env: Env, reason: str) -> float:
    return env.metric("sidecar_http2_protections_total", listener="outbound", reason=reason)


async def test_rapid_reset_gets_goaway(env: Env) -> None:
    client = await RawClient.open(env.port)
    try:
        for _ in range(150):  # over max_resets_per_second (100) in well under a second
            stream_id = client.request("/reset")
            client.conn.reset_stream(stream_id)
        client.flush()
        await client.until(lambda: client.goaway() is not None)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        client.close()
    assert protections(env, "rapid_reset") == 1
    await assert_still_serving(env)


async def test_a_flood_of_malformed_requests_gets_goaway(env: Env) -> None:
    """Each malformed request costs us a RST_STREAM to write: they count against the reset budget, so a client
    that sends them without end (and need not read) is cut off, not fed an ever longer write buffer."""
    from hyperframe.frame import HeadersFrame

    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    client = RawClient(reader, writer)
    try:
        for i in range(150):
            frame = HeadersFrame(2 * i + 1, flags=["END_HEADERS", "END_STREAM"])
            frame.data = b"\x82"  # only `:method: GET`: no :scheme or :path
            writer.write(frame.serialize())
        await writer.drain()
        await client.until(lambda: bool(client.frames_of(GoAwayFrame)) or client.closed)
    finally:
        client.close()
    assert protections(env, "rapid_reset") == 1
    await assert_still_serving(env)


async def test_ping_flood_gets_goaway(env: Env) -> None:
    client = await RawClient.open(env.port)
    try:
        for i in range(300):
            client.conn.ping(b"%08d" % i)
        client.flush()
        await client.until(lambda: client.goaway() is not None)
    finally:
        client.close()
    assert protections(env, "ping_flood") == 1
    await assert_still_serving(env)


async def test_settings_flood_gets_goaway(env: Env) -> None:
    client = await RawClient.open(env.port)
    try:
        for i in range(300):
            client.conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 4096 + i})
        client.flush()
        await client.until(lambda: client.goaway() is not None)
    finally:
        client.close()
    assert protections(env, "settings_flood") == 1
    await assert_still_serving(env)


async def test_streams_over_the_limit_are_refused(slow_env: Env) -> None:
    client = await RawClient.open(slow_env.port)
    try:
        ids = [client.request("/slow") for _ in range(110)]  # the advertised limit is 100
        await client.until(lambda: all(client.ended(i) for i in ids))
        refused = [i for i in ids if client.of(h2.events.StreamReset, i)]
        assert len(refused) == 10
        assert all(client.of(h2.events.StreamReset, i)[0].error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                   for i in refused)
        assert sum(client.status(i) == 200 for i in ids) == 100
    finally:
        client.close()
    assert protections(slow_env, "stream_limit") == 10


async def test_oversize_header_list_gets_goaway(env: Env) -> None:
    client = await RawClient.open(env.port)
    try:
        client.request("/big", extra=[(b"x-big-%d" % i, b"v" * 1000) for i in range(12)])  # over 8 KiB
        await client.until(lambda: client.goaway() is not None)
    finally:
        client.close()
    assert protections(env, "header_list_size") == 1
    await assert_still_serving(env)


async def test_continuation_flood_gets_goaway(env: Env) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end the block (the 2024 flood)."""
    from hyperframe.frame import ContinuationFrame, HeadersFrame

    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    client = RawClient(reader, writer)
    try:
        headers = HeadersFrame(1)
        headers.data = client.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                                   (b":path", b"/"), (b":authority", b"svc")])
        writer.write(headers.serialize())
        for _ in range(200):
            frame = ContinuationFrame(1)
            frame.data = b"\x40\x01a\x01b"  # literal header a: b, never END_HEADERS
            writer.write(frame.serialize())
        await writer.drain()
        await client.until(lambda: bool(client.frames_of(GoAwayFrame)) or client.closed)
    finally:
        client.close()
    assert protections(env, "continuation_flood") == 1
    await assert_still_serving(env)


# -- limits shared with HTTP/1.1 -----------------------------------------------------------------------------


@pytest.fixture
async def tight_env(sidecar: Callable[[str], Awaitable[object]]) -> AsyncIterator[Env]:
    upstream = await start_upstream()
    text = config(upstream.address).replace(
        "max_request_headers: 8KiB",
        "max_request_headers: 8KiB\n          max_headers: 10\n          max_request_body: 1KiB\n"
        "          stream_idle_timeout: 300ms")
    running = await sidecar(text)
    yield Env(running, upstream)
    await upstream.stop()


async def test_body_over_the_limit_gets_413_and_the_connection_goes_on(tight_env: Env) -> None:
    client = await RawClient.open(tight_env.port)
    try:
        declared = client.request("/declared", "POST", end=False, extra=[(b"content-length", b"4096")])
        streamed = client.request("/streamed", "POST", end=False)
        for stream_id in (declared, streamed):
            for _ in range(4):
                client.conn.send_data(stream_id, b"x" * 1024)
        client.flush()
        await client.until(lambda: client.ended(declared) and client.ended(streamed))
        assert client.status(declared) == 413 and client.status(streamed) == 413
        ok = client.request("/ok")
        await client.until(lambda: client.ended(ok))
        assert client.status(ok) == 200
    finally:
        client.close()
    assert not tight_env.upstream.requests[1:]  # only /ok reached the upstream


async def test_too_many_header_fields_get_431(tight_env: Env) -> None:
    client = await RawClient.open(tight_env.port)
    try:
        stream_id = client.request("/many", extra=[(b"x-h%d" % i, b"v") for i in range(20)])
        await client.until(lambda: client.ended(stream_id))
        assert client.status(stream_id) == 431
    finally:
        client.close()
    assert protections(tight_env, "header_list_size") == 1


async def test_a_stream_that_never_sends_its_body_gets_504(tight_env: Env) -> None:
    client = await RawClient.open(tight_env.port)
    try:
        stream_id = client.request("/silent", "POST", end=False)
        await client.until(lambda: client.ended(stream_id), timeout=5.0)
        assert client.status(stream_id) == 504, client.events
    finally:
        client.close()


async def test_request_trailers_reach_an_http1_upstream(sidecar: Callable[[str], Awaitable[object]]) -> None:
    """A raw HTTP/1.1 upstream sees the chunked body with the trailer fields the client sent over HTTP/2."""
    received = bytearray()
    done = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not received.endswith(b"\r\n\r\n") or b"0\r\n" not in received:
            data = await reader.read(65536)
            if not data:
                return
            received.extend(data)
        done.set()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    running: Any = await sidecar(config(f"127.0.0.1:{port}"))
    client = await RawClient.open(running.port())
    try:
        stream_id = client.request("/t", "POST", end=False, extra=[(b"te", b"trailers")])
        client.conn.send_data(stream_id, b"hello")
        client.conn.send_headers(stream_id, [(b"x-checksum", b"abc")], end_stream=True)
        client.flush()
        await client.until(lambda: client.ended(stream_id))
        assert client.status(stream_id) == 200
        await asyncio.wait_for(done.wait(), 5)
        assert b"transfer-encoding: chunked" in received.lower()
        assert b"te: trailers" in received.lower()
        assert received.endswith(b"0\r\nx-checksum: abc\r\n\r\n"), bytes(received)
    finally:
        client.close()
        server.close()


async def test_access_log_and_trace_propagation_for_http2_requests(sidecar: Callable[[str], Awaitable[object]],
                                                                   tmp_path: Path) -> None:
    from tests.integration.test_access_log import wait_lines

    upstream = await start_upstream()
    running: Any = await sidecar("    access_log: {path: access.log}\n" + config(upstream.address))
    client = await RawClient.open(running.port())
    try:
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        stream_id = client.request("/logged", extra=[(b"traceparent", parent.encode())])
        await client.until(lambda: client.ended(stream_id))
        headers = dict(client.of(h2.events.ResponseReceived, stream_id)[0].headers)
        echoed = json.loads(client.body(stream_id))
        [line] = await wait_lines(tmp_path / "access.log", 1)
    finally:
        client.close()
        await upstream.stop()
    assert line["path"] == "/logged" and line["status"] == 200
    assert line["request_id"] == headers[b"x-request-id"].decode() == echoed["headers"]["x-request-id"]
    # The trace goes on (same trace id, a new parent span id for the upstream request).
    sent = echoed["headers"]["traceparent"]
    assert sent.split("-")[1] == parent.split("-")[1] and sent.split("-")[2] != parent.split("-")[2]


async def test_routes_header_rules_splits_faults_and_rate_limits_over_http2(
        sidecar: Callable[[str], Awaitable[object]]) -> None:
    v1 = await start_upstream(name="v1")
    v2 = await start_upstream(name="v2")
    running: Any = await sidecar(f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - name: canary
            match: {{prefix: /api, headers: {{x-version: {{exact: v2}}}}}}
            cluster: v2
            headers:
              request: {{set: {{x-canary: "true"}}, remove: [x-debug]}}
              response: {{add: {{x-served-by: sidecar}}}}
          - name: split
            match: {{prefix: /split}}
            split: [{{cluster: v1, weight: 1}}, {{cluster: v2, weight: 1}}]
          - name: broken
            match: {{prefix: /broken}}
            cluster: v1
            fault: {{abort: {{status: 503, percent: 100}}}}
          - name: limited
            match: {{prefix: /limited}}
            cluster: v1
            rate_limit: {{requests_per_second: 1, burst: 2}}
          - name: rest
            match: {{prefix: /}}
            cluster: v1
    clusters:
      - name: v1
        endpoints: ["{v1.address}"]
      - name: v2
        endpoints: ["{v2.address}"]
    """)
    client = await RawClient.open(running.port())
    try:
        canary = client.request("/api/x", extra=[(b"x-version", b"v2"), (b"x-debug", b"1")])
        plain = client.request("/api/x")
        splits = [client.request("/split") for _ in range(20)]
        broken = client.request("/broken")
        limited = [client.request("/limited") for _ in range(4)]
        every = [canary, plain, *splits, broken, *limited]
        await client.until(lambda: all(client.ended(i) for i in every))
        answer = json.loads(client.body(canary))
        assert answer["name"] == "v2" and answer["headers"]["x-canary"] == "true" and "x-debug" not in answer["headers"]
        assert dict(client.of(h2.events.ResponseReceived, canary)[0].headers)[b"x-served-by"] == b"sidecar"
        assert json.loads(client.body(plain))["name"] == "v1"
        assert {json.loads(client.body(i))["name"] for i in splits} == {"v1", "v2"}
        assert client.status(broken) == 503
        assert sorted(client.status(i) for i in limited) == [200, 200, 429, 429]
    finally:
        client.close()
        await v1.stop()
        await v2.stop()


async def test_an_idle_connection_gets_goaway_and_closes(sidecar: Callable[[str], Awaitable[object]]) -> None:
    upstream = await start_upstream()
    running: Any = await sidecar(config(upstream.address).replace(
        "max_request_headers: 8KiB", "max_request_headers: 8KiB\n          idle_timeout: 300ms"))
    client = await RawClient.open(running.port())
    try:
        stream_id = client.request("/once")
        await client.until(lambda: client.ended(stream_id))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.until(lambda: client.closed, timeout=5.0)
        assert 0.2 < loop.time() - started < 2.0
        goaway = client.frames_of(GoAwayFrame)
        assert goaway and goaway[0].last_stream_id == stream_id and goaway[0].error_code == 0
    finally:
        client.close()
        await upstream.stop()


async def test_mtls_identity_reaches_an_http2_request(sidecar: Callable[[str], Awaitable[object]],
                                                      tmp_path: Path) -> None:
    import ssl

    pki = Pki(tmp_path / "pki")
    cert, key = pki.leaf("server", spiffe("server"), dns_names=["localhost"])
    client_cert, client_key = pki.leaf("web", spiffe("web"))
    upstream = await start_upstream()
    running: Any = await sidecar(config(upstream.address).replace(
        "        routes:",
        f"        tls: {{cert: {cert}, key: {key}, ca: {pki.ca}, require_client_cert: true}}\n        routes:", 1))
    context = ssl.create_default_context(cafile=pki.ca)
    context.check_hostname = False
    context.load_cert_chain(client_cert, client_key)
    context.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port(), ssl=context,
                                                   server_hostname="localhost")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    client = RawClient(reader, writer)
    try:
        stream_id = client.request("/who")
        await client.until(lambda: client.ended(stream_id))
        assert client.status(stream_id) == 200
        xfcc = json.loads(client.body(stream_id))["headers"]["x-forwarded-client-cert"]
        assert xfcc.endswith(f"URI={spiffe('web')}"), xfcc
    finally:
        client.close()
        await upstream.stop()


async def test_a_client_goaway_still_gets_the_responses_under_way(slow_env: Env) -> None:
    client = await RawClient.open(slow_env.port)
    try:
        stream_id = client.request("/slow")
        await asyncio.sleep(0.1)
        client.conn.close_connection()  # the client's GOAWAY: no more streams from it
        client.flush()
        await client.until(lambda: client.frame_ended(stream_id))
        assert b"".join(f.data for f in client.frames_of(DataFrame, stream_id)) == b"/slow"
        await client.until(lambda: client.closed, timeout=3.0)
    finally:
        client.close()


async def test_a_response_stuck_on_a_closed_window_is_reset_after_the_stream_idle_timeout(
        sidecar: Callable[[str], Awaitable[object]]) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 200_000)

    upstream = await start_upstream(big)
    running: Any = await sidecar(config(upstream.address).replace(
        "max_request_headers: 8KiB", "max_request_headers: 8KiB\n          stream_idle_timeout: 300ms"))
    client = await RawClient.open(running.port(), {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    try:
        stream_id = client.request("/big")
        # Never give a window back: the sidecar sends 1000 bytes, then waits, then gives up on the stream.
        await client.until(lambda: bool(client.of(h2.events.StreamReset, stream_id)), timeout=5.0)
        assert client.status(stream_id) == 200
        assert len(client.body(stream_id)) == 1000
        assert client.of(h2.events.StreamReset, stream_id)[0].error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
        other = client.request("/other")
        await client.until(lambda: len(client.body(other)) >= 1000 or client.ended(other))
        assert client.status(other) == 200  # the connection is still served
    finally:
        client.close()
        await upstream.stop()
    await asyncio.sleep(0.05)
    assert running.app.metrics.registry.get_sample_value(
        "sidecar_requests_total", {"listener": "outbound", "route": "all", "cluster": "backend", "code": "504"}) == 1


async def test_a_reload_changes_the_limits_of_new_connections(sidecar: Callable[[str], Awaitable[object]]) -> None:
    upstream = await start_upstream()
    text = config(upstream.address)
    running: Any = await sidecar(text)
    app = running.app
    try:
        app.loaded.path.write_text(text.replace(
            "max_request_headers: 8KiB",
            "max_request_headers: 8KiB\n          http2: {max_concurrent_streams: 7, initial_stream_window: 1MiB}"))
        assert await app.reload()
        client = await RawClient.open(running.port())
        try:
            stream_id = client.request("/after-reload")
            await client.until(lambda: client.ended(stream_id))
            assert client.status(stream_id) == 200
            [changed] = client.of(h2.events.RemoteSettingsChanged)[:1]
            settings = {code: c.new_value for code, c in changed.changed_settings.items()}
            assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
            assert settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 1 << 20
        finally:
            client.close()
    finally:
        await upstream.stop()


@pytest.mark.skipif(CURL is None, reason="needs curl")
async def test_a_local_reply_over_http2_has_one_content_length(sidecar: Callable[[str], Awaitable[Any]]) -> None:
    # A local reply's head carries its own content-length; the codec writes framing once (curl and nghttp2
    # refuse a response with two as a PROTOCOL_ERROR).
    running = await sidecar("""
    admin: {address: "127.0.0.1:0"}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes: [{name: only, match: {prefix: /only}, cluster: backend}]
    clusters: [{name: backend, endpoints: ["127.0.0.1:1"]}]
    """)
    code, out, err = await run("curl", "-sS", "--http2-prior-knowledge", "-D", "-",
                               f"http://127.0.0.1:{running.port()}/elsewhere")
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 404") and head.lower().count(b"content-length:") == 1, head
    assert body.startswith(b"404 destination_not_found")
