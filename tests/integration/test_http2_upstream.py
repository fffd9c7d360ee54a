"""HTTP/2 upstreams (`clusters[].protocol: http2`, prior knowledge) through real sockets: a grpcio server
behind the sidecar, called by a grpcio client (HTTP/2 both sides) and by an HTTP/1.1 client (aiohttp):
unary, server-streaming, client-streaming and bidirectional calls pass, a retry hides an UNAVAILABLE, a
trailers-only error reaches the caller as is, grpc-timeout is honoured, and many concurrent calls share a few
upstream connections.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import aiohttp
import grpc
import pytest

from tests.integration.admin_client import metric

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


def config(upstream: str, route_extra: str = "") -> str:
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
        protocol: http2
        connect_timeout: 1s
        endpoints: ["{upstream}"]
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


async def test_unary_call_with_trailers(sidecar: Any, echo: EchoServer) -> None:
    running = await sidecar(config(echo.address))

    def use(channel: grpc.Channel) -> tuple[bytes, dict[str, str]]:
        reply, call = channel.unary_unary(f"/{SERVICE}/Say").with_call(b"hi", timeout=TIMEOUT)
        return reply, dict(call.trailing_metadata())

    reply, trailing = await run(running.port(), use)
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
