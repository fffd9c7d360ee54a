"""The Python floor ("pyfloor"): the smallest correct-enough HTTP/1.1 reverse proxy built like the sidecar.

It exists to show the floor of this design in Python, measured in the same run as the sidecar: the same
building blocks (uvloop, asyncio.Protocol, httptools' HttpRequestParser downstream and HttpResponseParser
upstream, a keep-alive pool of upstream connections) and nothing else. What the sidecar costs above it is
the price of its features (routing, splits, retries, breakers, limits, metrics, trace, request id); what
this costs is the price of the building blocks themselves. It is not a product: no routing, retries,
timeouts, metrics or trace; bodies are buffered whole and re-sent with a Content-Length (no streaming, no
chunked responses, no upgrades, no HEAD, no responses delimited by close); it strips the fixed hop-by-hop
headers but not those named in `Connection`; pipelined requests are answered in order, one at a time.
Run: `python -m benchmarks.peers.raw_proxy --port 8080 --upstream 127.0.0.1:8081`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from http import HTTPStatus

import httptools
import uvloop

# RFC 9110 section 7.6.1 connection-specific headers, plus the framing recomputed here.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"content-length",
})
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Pool:
    """Idle keep-alive connections to the one upstream; a new one is opened when none is idle."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Upstream] = []
        self.connecting: set[asyncio.Task[None]] = set()

    def send(self, down: Downstream, request: bytes) -> None:
        if self.idle:
            up = self.idle.pop()
            up.down = down
            up.transport.write(request)
            return
        task = asyncio.ensure_future(self._connect(down, request))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, down: Downstream, request: bytes) -> None:
        try:
            _, up = await asyncio.get_running_loop().create_connection(lambda: Upstream(self), self.host, self.port)
        except OSError:
            down.fail()
            return
        up.down = down
        up.transport.write(request)


class Upstream(asyncio.Protocol):
    """One connection to the upstream: parses a response, hands it to its downstream, goes back idle."""

    transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.down: Downstream | None = None
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers.append(name + b": " + value + b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        body = b"".join(self.body)
        response = b"".join([b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown")), *self.headers,
                             b"content-length: %d\r\n\r\n" % len(body), body])
        down, self.down = self.down, None
        if self.parser.should_keep_alive():
            self.pool.idle.append(self)
        else:
            self.transport.close()
        if down is not None:
            down.respond(response)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        down, self.down = self.down, None
        if down is not None:
            down.fail()


class Downstream(asyncio.Protocol):
    """One client connection: parses requests and sends them upstream, one at a time, in order."""

    transport: asyncio.Transport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple[bytes, bool]] = deque()  # (request, keep-alive) not yet answered
        self.url = b""
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers.append(name + b": " + value + b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        length = [b"content-length: %d\r\n" % len(body)] if body else []
        request = b"".join([self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n", *self.headers, *length,
                            b"\r\n", body])
        self.pending.append((request, self.parser.should_keep_alive()))
        if len(self.pending) == 1:
            self.pool.send(self, request)

    def respond(self, response: bytes) -> None:
        _, keep_alive = self.pending.popleft()
        if self.transport.is_closing():
            return
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()
        elif self.pending:
            self.pool.send(self, self.pending[0][0])

    def fail(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(BAD_GATEWAY)
            self.transport.close()


async def serve(port: int, upstream: str) -> None:
    host, _, upstream_port = upstream.rpartition(":")
    pool = Pool(host, int(upstream_port))
    server = await asyncio.get_running_loop().create_server(lambda: Downstream(pool), "127.0.0.1", port,
                                                            backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
