"""WebSocket through the sidecar: the handshake is forwarded, then bytes are tunnelled both ways.

Upstream is a real aiohttp websocket handler, the client aiohttp's `ws_connect`: text and binary
messages both ways, server-initiated messages, and a clean close handshake from either side.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import WSMsgType, web

from tests.integration.raw import outbound_config


class WsUpstream:
    """An aiohttp app echoing websocket messages (prefixed) and recording the handshake headers."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.closed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append({k.lower(): v for k, v in request.headers.items()})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello from upstream")
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-please":
                    await ws.close(code=4001, message=b"upstream closes")
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + msg.data)
        self.closed.set()
        return ws

    async def plain(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="plain")

    async def start(self) -> WsUpstream:
        app = web.Application()
        app.router.add_get("/ws", self.handler)
        app.router.add_get("/plain", self.plain)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_websocket_messages_both_ways_and_client_close(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await WsUpstream().start()
    running = await sidecar(outbound_config(f"127.0.0.1:{upstream.port}"))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(running.url("/ws"), timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
            first = await ws.receive(timeout=2)
            assert (first.type, first.data) == (WSMsgType.TEXT, "hello from upstream")
            for i in range(20):
                await ws.send_str(f"text {i}")
                reply = await ws.receive(timeout=2)
                assert (reply.type, reply.data) == (WSMsgType.TEXT, f"echo:text {i}")
            big = bytes(range(256)) * 4096  # 1 MiB: crosses flow-control watermarks both ways
            await ws.send_bytes(big)
            reply = await ws.receive(timeout=5)
            assert reply.type == WSMsgType.BINARY
            assert reply.data == b"echo:" + big
            await ws.close()
            assert ws.closed
        # The upstream saw the handshake, with the headers it needs and our forwarding headers.
        headers = upstream.handshakes[0]
        assert headers["upgrade"].lower() == "websocket"
        assert "upgrade" in headers["connection"].lower()
        assert "sec-websocket-key" in headers
        assert headers["x-forwarded-for"] == "127.0.0.1"
        await asyncio.wait_for(upstream.closed.wait(), 2)
        # The sidecar still serves plain requests afterwards.
        async with session.get(running.url("/plain")) as reply:
            assert await reply.text() == "plain"
    await upstream.stop()


async def test_websocket_close_from_upstream(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await WsUpstream().start()
    running = await sidecar(outbound_config(f"127.0.0.1:{upstream.port}"))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(running.url("/ws")) as ws:
            await ws.receive(timeout=2)
            await ws.send_str("close-please")
            msg = await ws.receive(timeout=2)
            assert msg.type == WSMsgType.CLOSE
            assert msg.data == 4001
            assert msg.extra == "upstream closes"
        assert ws.closed
    await upstream.stop()


async def test_websocket_handshake_refused_by_upstream_is_a_plain_response(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await WsUpstream().start()
    running = await sidecar(outbound_config(f"127.0.0.1:{upstream.port}"))
    async with aiohttp.ClientSession() as session:
        # /plain answers 200 without upgrading: the client's handshake fails, the sidecar stays well.
        try:
            await session.ws_connect(running.url("/plain"))
            raise AssertionError("handshake should have failed")
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 200
        async with session.get(running.url("/plain")) as reply:
            assert await reply.text() == "plain"
    await upstream.stop()


async def test_many_websockets_at_once(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await WsUpstream().start()
    running = await sidecar(outbound_config(f"127.0.0.1:{upstream.port}"))

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        async with session.ws_connect(running.url("/ws")) as ws:
            await ws.receive(timeout=2)
            await ws.send_bytes(b"%d" % n)
            reply = await ws.receive(timeout=2)
            assert reply.data == b"echo:%d" % n

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, n) for n in range(20)))
    await upstream.stop()


async def test_upgrade_answered_without_101_ends_the_connection(sidecar) -> None:  # type: ignore[no-untyped-def]
    # After an upgrade request the client may already send frames; with no 101 they cannot be parsed as
    # HTTP, so the sidecar answers and closes rather than guess where the next request starts.
    from tests.integration.raw import RawClient, RawUpstream

    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
                b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 200
    assert reply.header(b"connection") == b"close"
    assert await client.closed()
    client.close()
    await upstream.stop()
