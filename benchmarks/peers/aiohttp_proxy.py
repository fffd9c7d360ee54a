"""The Python baseline: the obvious aiohttp reverse proxy (web.Application + one ClientSession).

What most people would write first: read the whole request body, forward method, path and headers (minus
hop-by-hop ones) with a shared ClientSession (TCPConnector(limit=0): keep-alive, no pool cap), read the
whole response body, strip hop-by-hop headers and return a web.Response. Default asyncio loop (no
uvloop), as the obvious version would have it.
Run: `python -m benchmarks.peers.aiohttp_proxy --port 8080 --upstream 127.0.0.1:8081`.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

# RFC 9110 section 7.6.1 connection-specific headers, plus the framing aiohttp recomputes itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length", "host",
})


def strip(headers: object) -> dict[str, str]:
    """The end-to-end headers only (multi-valued headers collapse: the obvious proxy does that too)."""
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}  # type: ignore[attr-defined]


def build_app(upstream: str) -> web.Application:
    """The proxy app: every path, every method, to `upstream` (host:port)."""
    base = f"http://{upstream}"
    app = web.Application()

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def proxy(request: web.Request) -> web.Response:
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(request.method, base + request.path_qs, headers=strip(request.headers),
                                   data=body or None, allow_redirects=False) as upstream_response:
            payload = await upstream_response.read()
            return web.Response(status=upstream_response.status, headers=strip(upstream_response.headers),
                                body=payload)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    args = parser.parse_args()
    web.run_app(build_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None,
                print=None, backlog=4096)


if __name__ == "__main__":
    main()
