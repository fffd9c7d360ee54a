"""gRPC through the sidecar with grpclib on both ends (the second gRPC implementation next to grpcio's tests in
test_http2_upstream.py): a grpclib client over h2c to the sidecar, a cluster with `protocol: http2` to a
grpclib server. Unary and server-streaming calls pass; an UNAVAILABLE the retry policy names is hidden by a
retry; a NOT_FOUND reaches the client as the server sent it. Messages are raw bytes (a pass-through codec),
so no generated stubs are needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from tests.conftest import free_port


class RawCodec(CodecBase):
    """Messages as the bytes they are."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class Echo:
    def __init__(self) -> None:
        self.calls = 0
        self.failures_left = 0

    async def say(self, stream: Stream[bytes, bytes]) -> None:
        self.calls += 1
        request = await stream.recv_message()
        if self.failures_left:
            self.failures_left -= 1
            raise GRPCError(Status.UNAVAILABLE, "warming up")
        if request == b"missing":
            raise GRPCError(Status.NOT_FOUND, "no such thing")
        await stream.send_message(b"echo:" + (request or b""))

    async def count(self, stream: Stream[bytes, bytes]) -> None:
        request = await stream.recv_message()
        for index in range(int(request or b"0")):
            await stream.send_message(str(index).encode())

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/svc.Echo/Say": Handler(self.say, Cardinality.UNARY_UNARY, bytes, bytes),
            "/svc.Echo/Count": Handler(self.count, Cardinality.UNARY_STREAM, bytes, bytes),
        }


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[Echo, int]]:
    echo = Echo()
    server = Server([echo], codec=RawCodec())
    port = free_port()
    await server.start("127.0.0.1", port)
    yield echo, port
    server.close()
    await server.wait_closed()


def config(port: int) -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - name: echo
            match: {{prefix: /svc.Echo/}}
            cluster: grpc
            retries: {{attempts: 2, on: [unavailable], backoff: {{base: 5ms, max: 10ms}}}}
    clusters:
      - name: grpc
        protocol: http2
        endpoints: ["127.0.0.1:{port}"]
    """


async def unary(channel: Channel, message: bytes) -> bytes:
    async with channel.request("/svc.Echo/Say", Cardinality.UNARY_UNARY, bytes, bytes, timeout=5) as stream:
        await stream.send_message(message, end=True)
        reply = await stream.recv_message()
        assert reply is not None
        return bytes(reply)


async def test_grpclib_calls_pass_through_and_failures_are_grpc_statuses(sidecar: Any,
                                                                         echo_server: tuple[Echo, int]) -> None:
    echo, port = echo_server
    running = await sidecar(config(port))
    channel = Channel("127.0.0.1", running.port(), codec=RawCodec())
    try:
        assert await unary(channel, b"hi") == b"echo:hi"
        async with channel.request("/svc.Echo/Count", Cardinality.UNARY_STREAM, bytes, bytes,
                                   timeout=5) as stream:
            await stream.send_message(b"5", end=True)
            replies = [bytes(message) async for message in stream]
        assert replies == [b"0", b"1", b"2", b"3", b"4"]
        # An UNAVAILABLE (a trailers-only answer) that the route retries: the caller never sees it.
        echo.failures_left, before = 1, echo.calls
        assert await unary(channel, b"again") == b"echo:again"
        assert echo.calls - before == 2
        # A NOT_FOUND is the server's answer, not a failure to retry: the caller gets it as sent.
        with pytest.raises(GRPCError) as refused:
            await unary(channel, b"missing")
        assert refused.value.status is Status.NOT_FOUND and refused.value.message == "no such thing"
    finally:
        channel.close()
