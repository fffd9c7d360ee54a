"""Trailer fields of chunked messages pass through the sidecar both ways, through real sockets.

The client and the upstream are raw sockets, so the bytes on the wire are what is checked: a chunked
request's trailer section reaches the upstream, a chunked response's trailer section reaches the client,
with the `Trailer` header that announces them and `te: trailers`; framing and hop-by-hop fields in a
trailer section are dropped, and a retried request replays its trailers with its body.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.integration.raw import outbound_config


class WireUpstream:
    """Reads one chunked request to its end (trailers included) and answers `answer`; keeps the raw bytes."""

    def __init__(self, answer: bytes, first_answer: bytes | None = None) -> None:
        self.answer = answer
        self.first_answer = first_answer
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> WireUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                data = head
                if b"transfer-encoding: chunked" in head.lower():
                    data += await reader.readuntil(b"\r\n0\r\n")  # through the last chunk's size line
                    data += await reader.readuntil(b"\r\n\r\n")   # the trailer section
                self.received.append(data)
                first = self.first_answer is not None and len(self.received) == 1
                writer.write(self.first_answer if first and self.first_answer else self.answer)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=1)


def dechunk(body: bytes) -> tuple[bytes, bytes]:
    """A chunked body -> (its data, its trailer section); chunk boundaries carry no meaning."""
    data = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return data, body[:-2]  # the trailer lines, without the final CRLF
        data += body[:size]
        body = body[size + 2:]


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    rest = b""
    if b"transfer-encoding: chunked" in head.lower():
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n"), 5)
        rest += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return head + rest


CHUNKED_REQUEST = (
    b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n"
    b"te: trailers\r\nconnection: te\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: sha256=abc\r\nhost: elsewhere\r\n\r\n"
)
CHUNKED_ANSWER = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status, grpc-message\r\n\r\n"
    b"2\r\nok\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\nproxy-authenticate: Basic\r\n\r\n"
)


async def test_request_trailers_reach_the_upstream_and_response_trailers_reach_the_client(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await WireUpstream(CHUNKED_ANSWER).start()
    running = await sidecar(outbound_config(upstream.address))
    answer = await _exchange(running.port(), CHUNKED_REQUEST)
    (sent,) = upstream.received
    head, _, body = sent.partition(b"\r\n\r\n")
    # The request went upstream chunked, announcing its trailers, and ended with them.
    assert b"\r\ntrailer: x-checksum\r\n" in head + b"\r\n" and b"\r\nte: trailers\r\n" in head + b"\r\n"
    assert dechunk(body) == (b"hello world", b"x-checksum: sha256=abc\r\n")
    assert b"elsewhere" not in body  # a routing field is never forwarded as a trailer
    # The response came back chunked with its trailer section.
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ntrailer: grpc-status, grpc-message\r\n" in answer
    assert answer.endswith(b"2\r\nok\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n")  # no proxy-*
    await upstream.stop()


async def test_a_retried_request_replays_its_trailers(sidecar) -> None:  # type: ignore[no-untyped-def]
    busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
    upstream = await WireUpstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", first_answer=busy).start()
    route = 'retries: {attempts: 2, on: ["503"], backoff: {base: 1ms, max: 2ms}}'
    running = await sidecar(outbound_config(upstream.address, route_extra=route))
    request = CHUNKED_REQUEST.replace(b"POST", b"PUT")  # an idempotent method may be retried
    answer = await _exchange(running.port(), request)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(upstream.received) == 2
    for sent in upstream.received:
        assert dechunk(sent.partition(b"\r\n\r\n")[2]) == (b"hello world", b"x-checksum: sha256=abc\r\n")
    await upstream.stop()


async def test_trailers_are_dropped_for_an_http10_client_that_cannot_receive_them(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await WireUpstream(CHUNKED_ANSWER).start()
    running = await sidecar(outbound_config(upstream.address))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port())
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)  # close-delimited: read to the end
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
    assert b"grpc-status" not in answer.partition(b"\r\n\r\n")[2]
    await upstream.stop()
