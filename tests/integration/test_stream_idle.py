"""The listener's `stream_idle_timeout` through real sockets: a request with no byte moving either way
(request body in, response out) for that long gets 504 `http_response_timeout` before its response has
started, and its client connection reset after; a slow but steady stream is never cut.

Upstreams are small asyncio servers scripted per test (never answer, stall after the head, trickle the
body); clients are raw sockets, so a reset is seen as a reset and timings are not hidden by client retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from tests.integration.raw import RawClient, outbound_config
from tests.integration.upstreams import start_upstream

IDLE = "http: {stream_idle_timeout: 300ms}"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedUpstream:
    """An upstream that runs `script` on each connection; `release` lets stalled scripts end at teardown."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.release = asyncio.Event()
        self.closed_by_peer = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> ScriptedUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def wait_or_peer_close(self, reader: asyncio.StreamReader) -> None:
        """Stall: until the test ends or the sidecar drops this connection."""
        release = asyncio.ensure_future(self.release.wait())
        peer = asyncio.ensure_future(reader.read())
        try:
            done, _ = await asyncio.wait({release, peer}, return_when=asyncio.FIRST_COMPLETED)
            if peer in done:
                self.closed_by_peer += 1
        finally:
            release.cancel()
            peer.cancel()

    async def stop(self) -> None:
        self.release.set()
        assert self.server is not None
        self.server.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[ScriptedUpstream]]]:
    upstreams: list[ScriptedUpstream] = []

    async def start(script: Script) -> ScriptedUpstream:
        upstream = await ScriptedUpstream(script).start()
        upstreams.append(upstream)
        return upstream

    yield start
    for upstream in upstreams:
        await upstream.stop()


async def test_upstream_that_never_answers_gets_504(sidecar, scripted) -> None:  # type: ignore[no-untyped-def]
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.wait_or_peer_close(reader)

    upstream = await scripted(silent)
    running = await sidecar(outbound_config(upstream.address, listener_extra=IDLE))
    client = await RawClient.connect(running.port())
    started = time.monotonic()
    client.send(b"GET /never HTTP/1.1\r\nhost: x\r\n\r\n")
    (reply,) = await client.responses(1, timeout=3)
    elapsed = time.monotonic() - started
    assert reply.status == 504
    proxy_status = reply.header(b"proxy-status") or b""
    assert proxy_status.startswith(b"sidecar; error=http_response_timeout"), proxy_status
    assert b"stream idle timeout" in proxy_status
    assert 0.29 <= elapsed <= 1.2, elapsed
    await asyncio.sleep(0.05)
    assert upstream.closed_by_peer == 1, "the upstream connection of a timed-out request is dropped"
    # The request was whole: the connection stays usable for the next one (which times out the same way).
    client.send(b"GET /again HTTP/1.1\r\nhost: x\r\n\r\n")
    (again,) = await client.responses(1, timeout=3)
    assert again.status == 504
    client.close()


async def test_body_stalled_after_the_head_resets_the_client(sidecar, scripted) -> None:  # type: ignore[no-untyped-def]
    async def stall_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst")
        await writer.drain()
        await upstream.wait_or_peer_close(reader)

    upstream = await scripted(stall_after_head)
    running = await sidecar(outbound_config(upstream.address, listener_extra=IDLE))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port())
    try:
        writer.write(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        headed = time.monotonic()
        assert head.startswith(b"HTTP/1.1 200 ")
        received = b""
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            # The 100-byte body never completes: the sidecar breaks the connection off (RST or EOF).
            received = await asyncio.wait_for(reader.readexactly(100), 3)
        elapsed = time.monotonic() - headed
    finally:
        writer.close()
    assert received == b""
    assert 0.25 <= elapsed <= 1.2, elapsed
    await asyncio.sleep(0.05)
    assert upstream.closed_by_peer == 1


async def test_slow_but_steady_response_body_is_not_cut(sidecar, scripted) -> None:  # type: ignore[no-untyped-def]
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        for i in range(10):  # a chunk every 100 ms for 1 s: never 300 ms without a byte
            await asyncio.sleep(0.1)
            writer.write(b"2\r\n%02d\r\n" % i)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await upstream.wait_or_peer_close(reader)

    upstream = await scripted(trickle)
    running = await sidecar(outbound_config(upstream.address, listener_extra=IDLE))
    client = await RawClient.connect(running.port())
    started = time.monotonic()
    client.send(b"GET /trickle HTTP/1.1\r\nhost: x\r\n\r\n")
    (reply,) = await client.responses(1, timeout=3)
    assert reply.status == 200
    assert reply.body == b"".join(b"%02d" % i for i in range(10))
    assert time.monotonic() - started >= 0.9
    client.close()


async def test_slow_but_steady_request_body_is_not_cut(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def size(request: web.Request) -> web.StreamResponse:
        return web.Response(text=str(len(await request.read())))

    upstream = await start_upstream(size)
    running = await sidecar(outbound_config(upstream.address, listener_extra=IDLE))
    client = await RawClient.connect(running.port())
    client.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    for _ in range(10):
        await asyncio.sleep(0.1)
        client.send(b"4\r\nbody\r\n")
    client.send(b"0\r\n\r\n")
    (reply,) = await client.responses(1, timeout=3)
    assert reply.status == 200
    assert reply.body == b"40"
    client.close()
    await upstream.stop()


async def test_stalled_request_body_gets_504_and_close(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address, listener_extra=IDLE))
    client = await RawClient.connect(running.port())
    started = time.monotonic()
    client.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
    (reply,) = await client.responses(1, timeout=3)
    assert reply.status == 504
    assert (reply.header(b"proxy-status") or b"").startswith(b"sidecar; error=http_response_timeout")
    assert 0.29 <= time.monotonic() - started <= 1.2
    # The body never arrived whole: the stream position is lost, so the connection ends with the answer.
    assert await client.closed(timeout=2)
    client.close()
    await upstream.stop()
