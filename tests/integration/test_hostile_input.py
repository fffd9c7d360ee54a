"""Hostile and malformed downstream input, over raw sockets, against a running sidecar.

Each case sends bytes a well-behaved client never would and checks the contract's "Local replies"
row: the status (400/413/431/408/405/505), the `Proxy-Status` error token, that the connection is
closed afterwards, that nothing reached the upstream for that request, that no traceback leaks, and
that the sidecar still serves a normal request on a new connection.

"Nothing reached the upstream" is checked twice: the recording aiohttp upstream saw no request, and a
byte-counting TCP relay between the sidecar and that upstream saw no byte at all (a request head sent
upstream, even without its body, is a leak the recording upstream alone would not notice).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from tests.integration.upstreams import Upstream, start_upstream

READ_TIMEOUT = 2.0


# -- a byte-counting relay in front of the recording upstream -------------------------------------


class Relay:
    """A TCP relay that records every byte the sidecar sends towards the upstream."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.received = bytearray()
        self.connections = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await src.read(65536):
                    if record:
                        self.received += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.close()
        await self.server.wait_closed()


# -- raw HTTP/1.1 on the client side ----------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = b""
    closed: bool = False
    elapsed: float = 0.0
    trailing: bytes = field(default=b"")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    assert parts[0] in ("HTTP/1.1", "HTTP/1.0"), lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one response (Content-Length or chunked framed) from `reader`."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, headers = _parse_head(head[:-4])
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return Response(status, headers, body, raw=head + body)


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = READ_TIMEOUT) -> tuple[bytes, bool]:
    """Everything until the peer closes; (bytes, True) on EOF or reset, (bytes, False) on timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, False
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                return data, True
            data += chunk
    except ConnectionError:
        return data, True
    except TimeoutError:
        return data, False


async def send_raw(port: int, data: bytes, *, split: int | None = None) -> Response:
    """Send `data` on a new connection and read the one answer, then whether the connection closed.

    The answer is read while the bytes are still being written: a sidecar that answers early and closes
    makes the client's later writes fail, and the answer must be read before that error.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = asyncio.create_task(asyncio.wait_for(read_response(reader), READ_TIMEOUT))
    try:
        pieces = [data] if split is None else [data[i:i + split] for i in range(0, len(data), split)]
        for piece in pieces:
            if answer.done() or reader.at_eof():
                break  # answered (and closed) before the client finished sending
            try:
                writer.write(piece)
                await writer.drain()
            except ConnectionError:
                break
            if split is not None:
                await asyncio.sleep(0.005)
        try:
            response = await answer
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AssertionError(f"no complete response to {data[:80]!r}: {exc!r}") from exc
        except TimeoutError as exc:
            raise AssertionError(f"no response within {READ_TIMEOUT}s to {data[:80]!r}") from exc
        response.elapsed = time.monotonic() - started
        response.trailing, response.closed = await read_until_eof(reader)
        return response
    finally:
        answer.cancel()
        writer.close()


NORMAL = b"GET /ok HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"


@dataclass
class Env:
    port: int
    upstream: Upstream
    relay: Relay

    async def normal_request(self) -> Response:
        response = await send_raw(self.port, NORMAL)
        assert response.status == 200, response
        assert b'"path": "/ok"' in response.body
        return response

    async def assert_refused(self, data: bytes, status: int, error: str = "http_request_error",
                             *, split: int | None = None) -> Response:
        """`data` is answered `status` locally, the connection closes, nothing reaches the upstream."""
        requests_before = len(self.upstream.requests)
        bytes_before = len(self.relay.received)
        response = await send_raw(self.port, data, split=split)
        assert response.status == status, (response.status, response.body)
        proxy_status = response.headers.get("proxy-status", "")
        assert proxy_status.startswith(f"sidecar; error={error}"), proxy_status
        assert b"Traceback" not in response.body
        assert response.closed, "the connection must be closed after a protocol error"
        assert response.trailing == b"", f"nothing may follow the error reply: {response.trailing!r}"
        await asyncio.sleep(0.05)  # anything the sidecar forwarded would have reached the relay by now
        assert len(self.upstream.requests) == requests_before, "the request reached the upstream"
        leaked = bytes(self.relay.received[bytes_before:])
        assert leaked == b"", f"bytes reached the upstream: {leaked[:200]!r}"
        await self.normal_request()
        return response


def config(endpoint: str) -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        http:
          max_request_headers: 4KiB
          max_headers: 10
          header_read_timeout: 300ms
          max_request_body: 1KiB
        routes:
          - name: all
            match: {{prefix: /}}
            cluster: backend
    clusters:
      - name: backend
        endpoints: ["{endpoint}"]
    """


@pytest.fixture
async def env(sidecar: Callable[[str], Awaitable[object]]) -> AsyncIterator[Env]:
    upstream = await start_upstream()
    relay = Relay(upstream.port)
    await relay.start()
    running = await sidecar(config(relay.address))
    yield Env(running.port(), upstream, relay)  # type: ignore[attr-defined]
    await relay.stop()
    await upstream.stop()


async def test_local_reply_head_has_each_header_once(env: Env) -> None:
    response = await send_raw(env.port, b"GET /x HTTP/1.1\r\nX-A: b\r\n\r\n")
    assert response.status == 400
    names = [line.split(b":", 1)[0].lower() for line in response.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]]
    assert len(names) == len(set(names)), names


# -- framing attacks ---------------------------------------------------------------------------------


async def test_normal_request_goes_through(env: Env) -> None:
    await env.normal_request()
    assert len(env.upstream.requests) == 1
    assert env.relay.received.startswith(b"GET /ok HTTP/1.1\r\n")


async def test_content_length_with_transfer_encoding(env: Env) -> None:
    await env.assert_refused(
        b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n", 400)


async def test_transfer_encoding_with_content_length_reversed(env: Env) -> None:
    await env.assert_refused(
        b"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"0\r\n\r\n", 400)


async def test_two_differing_content_lengths(env: Env) -> None:
    await env.assert_refused(
        b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400)


async def test_content_length_list(env: Env) -> None:
    await env.assert_refused(b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5, 6\r\n\r\nhello!", 400)


@pytest.mark.parametrize("value", [b"-1", b"+5", b"0x5", b"5 5", b"abc"])
async def test_invalid_content_length(env: Env, value: bytes) -> None:
    await env.assert_refused(b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: " + value + b"\r\n\r\nhello", 400)


@pytest.mark.parametrize("te", [b"chunked, identity", b"identity", b"gzip", b"xchunked"])
async def test_transfer_encoding_not_ending_in_chunked(env: Env, te: bytes) -> None:
    await env.assert_refused(
        b"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: " + te + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400)


@pytest.mark.parametrize("chunks", [b"zz\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\nhello\r\n",
                                    b"5\r\nhelloXX0\r\n\r\n", b"5 x\r\nhello\r\n0\r\n\r\n"])
async def test_invalid_chunk_size(env: Env, chunks: bytes) -> None:
    await env.assert_refused(
        b"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks, 400)


async def test_invalid_chunk_after_the_body_started_streaming(env: Env) -> None:
    """The head has gone upstream already: the client gets its 400, the upstream never a whole request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.2)
        writer.write(b"zz\r\nworld\r\n0\r\n\r\n")
        response = await asyncio.wait_for(read_response(reader), READ_TIMEOUT)
        rest, closed = await read_until_eof(reader)
    finally:
        writer.close()
    assert response.status == 400
    assert response.headers["proxy-status"].startswith("sidecar; error=http_request_error")
    assert closed and rest == b""
    await asyncio.sleep(0.1)
    assert not env.upstream.requests
    await env.normal_request()


async def test_obs_fold_header_continuation(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\nX-Folded: a\r\n b\r\n\r\n", 400)


async def test_nul_in_header_value(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\nX-Nul: a\x00b\r\n\r\n", 400)


async def test_bare_cr_in_header(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\nX-Cr: a\rb\r\n\r\n", 400)


async def test_bare_lf_line_ending(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\nX-Lf: a\nX-Injected: b\r\n\r\n", 400)


async def test_header_name_with_space(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\nBad Name: x\r\n\r\n", 400)


async def test_space_before_colon(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400)


async def test_missing_host_on_http11(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nX-A: b\r\n\r\n", 400)


async def test_two_hosts(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)


async def test_http10_without_host_is_served(env: Env) -> None:
    response = await send_raw(env.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.closed


# -- size limits ----------------------------------------------------------------------------------------


async def test_oversize_request_line(env: Env) -> None:
    await env.assert_refused(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: svc\r\n\r\n", 431)


async def test_oversize_headers(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431)


async def test_oversize_headers_spread_over_many(env: Env) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 600) for i in range(8))
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\n" + headers + b"\r\n", 431)


async def test_oversize_headers_arriving_in_pieces(env: Env) -> None:
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431,
                             split=700)


async def test_unterminated_oversize_header_is_refused_before_it_ends(env: Env) -> None:
    """A header line that never ends must not be buffered without bound: 431 (not the 408 of the head timer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    answer = asyncio.create_task(asyncio.wait_for(read_response(reader), READ_TIMEOUT))
    try:
        writer.write(b"GET /x HTTP/1.1\r\nHost: svc\r\nX-Big: ")
        await writer.drain()
        for _ in range(16):  # 16 KiB of one header value, never terminated, well within 300 ms
            if answer.done() or reader.at_eof():
                break
            try:
                writer.write(b"b" * 1024)
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.002)
        response = await answer
        rest, closed = await read_until_eof(reader)
    finally:
        answer.cancel()
        writer.close()
    assert response.status == 431
    assert closed and rest == b""
    assert env.relay.received == b""
    await env.normal_request()


async def test_too_many_headers(env: Env) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(12))
    await env.assert_refused(b"GET /x HTTP/1.1\r\nHost: svc\r\n" + headers + b"\r\n", 431)


async def test_max_headers_exactly_is_served(env: Env) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(8))  # + Host + Connection = 10
    response = await send_raw(env.port, b"GET /x HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n" + headers
                              + b"\r\n")
    assert response.status == 200


async def test_body_over_limit_with_content_length(env: Env) -> None:
    await env.assert_refused(
        b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000, 413)


async def test_body_over_limit_declared_only(env: Env) -> None:
    """The declared length alone is refused: the client need not send the body to get its 413."""
    await env.assert_refused(b"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5000000\r\n\r\n", 413)


async def test_body_over_limit_chunked(env: Env) -> None:
    body = b"".join(b"100\r\n" + b"c" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    await env.assert_refused(
        b"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n" + body, 413)


async def test_body_at_limit_is_served(env: Env) -> None:
    response = await send_raw(
        env.port, b"POST /x HTTP/1.1\r\nHost: svc\r\nConnection: close\r\nContent-Length: 1024\r\n\r\n"
        + b"a" * 1024)
    assert response.status == 200
    assert env.upstream.bodies == [b"a" * 1024]


# -- smuggling: the upstream sees exactly what a correct parser sees ----------------------------------


async def test_smuggled_request_inside_chunk_data_stays_body(env: Env) -> None:
    hidden = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\n"
    data = (b"POST /front HTTP/1.1\r\nHost: svc\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(hidden) + hidden + b"\r\n0\r\n\r\n")
    response = await send_raw(env.port, data)
    assert response.status == 200
    assert response.closed and response.trailing == b""
    assert [r.path for r in env.upstream.requests] == ["/front"]
    assert env.upstream.bodies == [hidden]
    assert b"/smuggled" not in env.relay.received.split(b"\r\n\r\n", 1)[0]


async def test_request_after_terminal_chunk_is_a_separate_request(env: Env) -> None:
    data = (b"POST /front HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: svc\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    try:
        writer.write(data)
        first = await asyncio.wait_for(read_response(reader), READ_TIMEOUT)
        second = await asyncio.wait_for(read_response(reader), READ_TIMEOUT)
        rest, closed = await read_until_eof(reader)
    finally:
        writer.close()
    assert (first.status, second.status) == (200, 200)
    assert b'"path": "/front"' in first.body and b'"path": "/second"' in second.body
    assert rest == b"" and closed
    assert [r.path for r in env.upstream.requests] == ["/front", "/second"]
    assert env.upstream.bodies == [b"", b"hello"]


async def test_content_length_body_hiding_a_request_stays_body(env: Env) -> None:
    hidden = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n"
    data = (b"POST /front HTTP/1.1\r\nHost: svc\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(hidden)
            + hidden)
    response = await send_raw(env.port, data)
    assert response.status == 200 and response.closed and response.trailing == b""
    assert [r.path for r in env.upstream.requests] == ["/front"]
    assert env.upstream.bodies == [hidden]


async def test_smuggling_with_te_and_cl_reaches_nothing(env: Env) -> None:
    """The classic CL.TE / TE.CL desync: refused outright, neither interpretation is forwarded."""
    await env.assert_refused(
        b"POST /front HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"5c\r\nGET /smuggled HTTP/1.1\r\nHost: svc\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n", 400)


# -- methods and protocol versions ----------------------------------------------------------------


async def test_connect_is_refused(env: Env) -> None:
    await env.assert_refused(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405)


@pytest.mark.parametrize("split", [None, 3, 1])
async def test_http2_preface_is_served_as_http2(env: Env, split: int | None) -> None:
    """Every listener serves h2c on its port (issue 19): the preface, however it is cut, gets the HTTP/2 server's
    SETTINGS frame, not an HTTP/1 answer; nothing reaches the upstream."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    try:
        pieces = [preface] if split is None else [preface[i:i + split] for i in range(0, len(preface), split)]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.002)
        frame = await asyncio.wait_for(reader.readexactly(9), READ_TIMEOUT)
        assert frame[3] == 0x4 and frame[5:9] == b"\0\0\0\0", frame  # SETTINGS on stream 0
    finally:
        writer.close()
    assert not env.upstream.requests
    await env.normal_request()


@pytest.mark.parametrize("line", [b"GET /x HTTP/2.0", b"GET /x HTTP/1.2", b"GET /x HTTP/3.0"])
async def test_unsupported_http_version(env: Env, line: bytes) -> None:
    response = await send_raw(env.port, line + b"\r\nHost: svc\r\n\r\n")
    assert response.status in (400, 505)
    assert response.closed
    assert not env.upstream.requests
    assert env.relay.received == b""


@pytest.mark.parametrize("line", [b"GET x HTTP/1.1", b"GET /a b HTTP/1.1", b"G@T / HTTP/1.1",
                                  b"GET /\x7f HTTP/1.1", b"GET / HTTP/1.1 x"])
async def test_malformed_request_line(env: Env, line: bytes) -> None:
    await env.assert_refused(line + b"\r\nHost: svc\r\n\r\n", 400)


# -- timing: slowloris ---------------------------------------------------------------------------


async def test_slowloris_gets_408_while_others_are_served(env: Env) -> None:
    head = b"GET /slow HTTP/1.1\r\nHost: svc\r\nX-Padding: " + b"p" * 60 + b"\r\n\r\n"

    async def dribble() -> tuple[bytes, bool, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        started = time.monotonic()
        answer = asyncio.create_task(read_until_eof(reader))
        try:
            for byte in head:
                if answer.done() or reader.at_eof():
                    break
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0.04)  # ~4 s for the whole head: far slower than 300 ms
            data, closed = await answer
            return data, closed, time.monotonic() - started
        finally:
            writer.close()

    slow = asyncio.create_task(dribble())
    await asyncio.sleep(0.05)
    served_in: list[float] = []
    for _ in range(3):
        started = time.monotonic()
        await env.normal_request()
        served_in.append(time.monotonic() - started)
    data, closed, elapsed = await slow
    status, headers = _parse_head(data.split(b"\r\n\r\n", 1)[0])
    assert status == 408
    assert headers["proxy-status"].startswith("sidecar; error=http_request_error")
    assert b"Traceback" not in data
    assert closed
    assert 0.25 <= elapsed < 2.0, elapsed
    assert max(served_in) < 0.25, served_in
    assert [r.path for r in env.upstream.requests] == ["/ok"] * 3


async def test_slow_first_byte_then_fast_head_is_served(env: Env) -> None:
    """The head timer runs from a request's first byte: idle time before it is idle_timeout's."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    try:
        await asyncio.sleep(0.5)
        writer.write(NORMAL)
        response = await asyncio.wait_for(read_response(reader), READ_TIMEOUT)
    finally:
        writer.close()
    assert response.status == 200


async def test_head_timeout_on_second_request_of_keep_alive(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    try:
        writer.write(b"GET /first HTTP/1.1\r\nHost: svc\r\n\r\n")
        first = await asyncio.wait_for(read_response(reader), READ_TIMEOUT)
        await asyncio.sleep(0.4)  # idle between requests: not the head timer
        writer.write(b"GET /second HTTP/1.1\r\n")  # then a head that never completes
        second = await asyncio.wait_for(read_response(reader), READ_TIMEOUT)
        rest, closed = await read_until_eof(reader)
    finally:
        writer.close()
    assert first.status == 200
    assert second.status == 408
    assert closed and rest == b""
    assert [r.path for r in env.upstream.requests] == ["/first"]


# -- volume ----------------------------------------------------------------------------------------


async def test_many_garbage_connections_then_a_normal_request(env: Env) -> None:
    rng = random.Random(1234)
    samples = [
        bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(60)
    ] + [
        b"GET / HTTP/1.1\r\nHost: svc\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 50 + b"\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] * 7

    async def one(data: bytes) -> tuple[bytes, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        try:
            writer.write(data)
            try:
                await writer.drain()
                writer.write_eof()
            except (ConnectionError, OSError):
                pass
            return await read_until_eof(reader, timeout=3.0)
        finally:
            writer.close()

    results = await asyncio.gather(*(one(data) for data in samples[:100]))
    for (answer, closed), data in zip(results, samples, strict=True):
        assert closed, f"connection left open after {data[:60]!r}"
        assert b"Traceback" not in answer
        if answer and data.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
            assert answer[3] == 0x4, answer[:20]  # served as HTTP/2: the server's SETTINGS frame first
        elif answer:
            status, headers = _parse_head(answer.split(b"\r\n\r\n", 1)[0])
            assert status in (400, 405, 408, 413, 431, 505), (status, data[:60])
            assert headers["proxy-status"].startswith("sidecar; error=http_"), headers
    assert not env.upstream.requests
    assert env.relay.received == b""
    await env.normal_request()
