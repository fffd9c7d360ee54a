"""Micro-benchmark: cost per request of the HTTP/1.1 codecs, without a network.

Server side: a typical request (GET, 6 headers, a traceparent, no x-request-id, so one is generated) fed
to `proxy.http.server.ServerConnection.data_received` on a fake transport, through the handler task the
codec starts, to a fake listener that answers a small 200 at once, until the response bytes are written
and the connection is idle again: parse + head building + request id + dispatch + response framing.
Client side: a typical upstream response (nginx-like, 33-byte body) through
`proxy.http.client.ClientConnection`: send the request head, parse the response, take the head and body,
finish back to the pool hook. Two floors are printed for subtraction: httptools alone with empty callbacks, and
`await asyncio.sleep(0)` (the server path pays one loop turn per request to let its handler task run).
Runs on uvloop when installed, as the sidecar does. Run: `python -m benchmarks.micro.bench_codec [--iterations N]`.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import httptools

from benchmarks.micro._common import iterations, ns_per_call, print_results
from proxy.http.client import NO_BODY, ClientConnection
from proxy.http.server import Exchange, ServerConnection
from proxy.http.settings import ServerSettings
from proxy.local_reply import LocalReply
from proxy.message import RequestHead, ResponseHead
from proxy.stream import ByteCounter

REQUEST = (
    b"GET /api/v1/campaigns?page=2 HTTP/1.1\r\n"
    b"Host: campaigns.default.svc.cluster.local\r\n"
    b"User-Agent: campaign-web/1.4 (python-requests/2.31)\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
UPSTREAM_REQUEST = RequestHead(
    b"GET", "/api/v1/campaigns", b"page=2", "campaigns.default.svc.cluster.local",
    b"campaigns.default.svc.cluster.local",
    [(b"user-agent", b"campaign-web/1.4"), (b"accept", b"application/json"), (b"x-request-id", b"8c3e0e5f-0000")])
ATTEMPT = (b"x-sidecar-attempt", b"1")
BODY = b'{"campaigns": [], "page": 2}\n\n\n\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Tue, 25 Nov 2025 12:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n%s" % (len(BODY), BODY)
)
ANSWER_HEAD = ResponseHead(200, b"OK", [(b"content-type", b"application/json")])


class CountingTransport:
    """Enough of asyncio.Transport for the codecs; written bytes are counted, not kept (no growth)."""

    def __init__(self) -> None:
        self.written = 0
        self.first = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.first:
            self.first = bytes(data[:64])
        self.written += len(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0


class AnsweringListener:
    """A listener whose handler answers every request with a small 200 at once."""

    def __init__(self) -> None:
        self.settings = ServerSettings()
        self.in_flight = 0
        self.rng = random.Random(0)
        self.handled = 0
        self.traffic = ByteCounter()

    async def handle(self, exchange: Exchange) -> None:
        self.handled += 1
        exchange.start_response(ANSWER_HEAD, len(BODY), False, BODY)
        exchange.end_response()

    def connection_opened(self, conn: ServerConnection) -> None:
        pass

    def connection_closed(self, conn: ServerConnection) -> None:
        pass

    def local_reply_sent(self, exchange: Exchange, reply: LocalReply) -> None:
        raise AssertionError(f"unexpected local reply {reply.head.status}")


class DownstreamConn:
    write_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class DownstreamExchange:
    """Where ClientConnection splices response body bytes that arrive after the head."""

    def __init__(self) -> None:
        self.conn = DownstreamConn()
        self.upstream_reader: object = None
        self.write_paused = False

    def write_body(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        raise AssertionError("downstream aborted")


async def server_requests(number: int) -> float:
    loop = asyncio.get_running_loop()
    listener = AnsweringListener()
    conn = ServerConnection(listener, loop)  # type: ignore[arg-type]
    transport = CountingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    feed, sleep = conn.data_received, asyncio.sleep
    start = time.perf_counter()
    for _ in range(number):
        feed(REQUEST)
        await sleep(0)  # the handler task runs in this turn of the loop
    elapsed = time.perf_counter() - start
    assert listener.handled == number and conn.idle, (listener.handled, number)
    assert transport.first.startswith(b"HTTP/1.1 200 OK"), transport.first
    conn.connection_lost(None)
    return elapsed


async def client_responses(number: int) -> float:
    loop = asyncio.get_running_loop()
    conn = ClientConnection(loop, "cluster bench: endpoint 127.0.0.1:1")
    conn.connection_made(CountingTransport())  # type: ignore[arg-type]
    pooled: list[ClientConnection] = []
    conn.on_idle = pooled.append
    exchange = DownstreamExchange()
    start = time.perf_counter()
    for _ in range(number):
        conn.send(UPSTREAM_REQUEST, ATTEMPT, NO_BODY, None, None, False)
        conn.data_received(RESPONSE)
        ready = await conn.response_head()  # already resolved: no loop turn
        first = conn.take_body()
        if not conn.attach(exchange):  # type: ignore[arg-type]
            await conn.response_done()
        conn.finish(reusable=True)
    elapsed = time.perf_counter() - start
    assert ready.head.status == 200 and first == BODY and len(pooled) == number, (ready.head.status, first)
    return elapsed


class _NoOp:
    def on_url(self, url: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        pass

    def on_headers_complete(self) -> None:
        pass


def parse_floor(number: int) -> float:
    """httptools alone with empty callbacks: the part of the server path that is llhttp's, not ours."""
    feed = httptools.HttpRequestParser(_NoOp()).feed_data
    start = time.perf_counter()
    for _ in range(number):
        feed(REQUEST)
    return time.perf_counter() - start


async def loop_floor(number: int) -> float:
    sleep = asyncio.sleep
    start = time.perf_counter()
    for _ in range(number):
        await sleep(0)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    number = iterations(argv, 50_000, __doc__.splitlines()[0])
    try:
        import uvloop
        runner = uvloop.run
        loop_name = "uvloop"
    except ImportError:
        runner = asyncio.run
        loop_name = "asyncio"

    def timed(coro: Any) -> Any:
        return lambda n: runner(coro(n))

    results = {
        f"server: request parsed, answered, idle again ({loop_name})": ns_per_call(timed(server_requests), number),
        "client: request sent, response parsed + finished": ns_per_call(timed(client_responses), number),
        "floor: httptools parse alone (empty callbacks)": ns_per_call(parse_floor, number),
        f"floor: await asyncio.sleep(0) ({loop_name})": ns_per_call(timed(loop_floor), number),
    }
    print_results(number, results)


if __name__ == "__main__":
    main(sys.argv)
