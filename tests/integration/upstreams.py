"""Real upstream servers for integration tests (aiohttp web apps on 127.0.0.1, or another loopback address
such as 127.0.0.2 standing in for a second Pod IP; port picked by the OS unless given)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream:
    """A running aiohttp server that records what it received."""

    def __init__(self, runner: web.AppRunner, port: int, host: str = "127.0.0.1") -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self.requests: list[web.Request] = []
        self.bodies: list[bytes] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_upstream(handler: Handler | None = None, name: str = "upstream", host: str = "127.0.0.1",
                         port: int = 0) -> Upstream:
    """Start an upstream; the default handler echoes method, path and selected headers as JSON."""
    holder: list[Upstream] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        holder[0].requests.append(request)
        holder[0].bodies.append(body)
        if handler is not None:
            return await handler(request)
        return web.json_response({
            "name": name,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            # Repeated headers are joined with ", " (as a proxy may legally fold them).
            "headers": {k.lower(): ", ".join(request.headers.getall(k)) for k in request.headers},
            "body_length": len(body),
        })

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream = Upstream(runner, port, host)
    holder.append(upstream)
    return upstream
