"""The admin HTTP server (aiohttp.web): health, readiness, metrics, dumps, shutdown, log level.

Owns: the admin routes and their status codes (CONTRACT.md "Admin endpoints"), the loopback-only
rule for the endpoints that change state, and the guarantee that no traceback reaches a client.

Must not: know how the sidecar is built. Everything it shows comes from an `AdminSource` the
assembly hands in; it imports no listener, cluster, metrics or config module, so it can be tested
with a fake source and cannot reach into the request path.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar

from aiohttp import web

log = logging.getLogger(__name__)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminSource(Protocol):
    """What the admin server shows and what it can ask the process to do.

    Methods may answer directly or with an awaitable: a worker's view is in memory, while a
    multi-worker supervisor must ask its workers over their unix sockets first.
    """

    def ready(self) -> tuple[bool, str] | Awaitable[tuple[bool, str]]:
        """(True, "") when ready; (False, reason) otherwise, including while draining."""
        ...

    def config_dump(self) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """The effective config, secrets redacted, with a top-level `version_hash`."""
        ...

    def clusters(self) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Per cluster: endpoints with health, breaker state, ejection, in-flight, EWMA latency."""
        ...

    async def metrics(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) for a scrape with this `Accept` header; may gather from workers."""
        ...

    def request_shutdown(self) -> None:
        """Start the drain (as SIGTERM does); must return promptly."""
        ...

    def log_level(self) -> str: ...

    def set_log_level(self, level: str) -> Awaitable[None] | None:
        """Apply `level` (one of LOG_LEVELS) in every worker."""
        ...


_T = TypeVar("_T")


async def _answer(value: _T | Awaitable[_T]) -> _T:
    # isinstance against the ABC (not inspect.isawaitable) so the type checker narrows both branches.
    if isinstance(value, Awaitable):
        return await value
    return value


def _is_loopback(request: web.Request) -> bool:
    # The transport's peer, never X-Forwarded-For: a header must not grant shutdown rights.
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not peer:
        return False  # unknown peer (e.g. a closed transport): refuse
    try:
        addr = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except (ValueError, TypeError, IndexError):
        return False
    # On a dual-stack "::" bind an IPv4 loopback client appears as ::ffff:127.x.y.z.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _forbidden() -> web.Response:
    return web.Response(status=403, text="forbidden: only loopback clients may do this\n")


def _json(data: Any) -> web.Response:
    # default=str: a dump holding a Path or an enum should still render, not fail the whole page.
    return web.Response(
        text=json.dumps(data, indent=2, default=str) + "\n", content_type="application/json"
    )


@web.middleware
async def _no_tracebacks(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turn any failure of a handler (usually of the source) into a short 500, logged here."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # 404/405 and friends are answers, not failures
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        return web.Response(status=500, text=f"internal error serving {request.path}; see the sidecar log\n")


class AdminServer:
    """Serves the admin endpoints for `source` on host:port (port 0 picks a free port), or on the unix
    socket `unix_path` instead (a worker's admin view, gathered by its supervisor)."""

    def __init__(self, source: AdminSource, host: str, port: int, *, unix_path: str | None = None) -> None:
        self._source = source
        self._host = host
        self._port = port
        self._unix_path = unix_path
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[_no_tracebacks])
        app.router.add_get("/live", self._live)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/config_dump", self._config_dump)
        app.router.add_get("/clusters", self._clusters)
        app.router.add_post("/shutdown", self._shutdown)
        app.router.add_get("/logging", self._get_logging)
        app.router.add_post("/logging", self._set_logging)
        return app

    async def start(self) -> int:
        """Bind and serve; return the bound port (0 on a unix socket)."""
        if self._runner is not None:
            raise RuntimeError("admin server already started")
        # access_log=None: scrapes and probes every few seconds would drown the sidecar's own log.
        # shutdown_timeout is short because admin requests are tiny; stop() must not hold a drain.
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site: web.BaseSite
            if self._unix_path is not None:
                site = web.UnixSite(runner, self._unix_path)
            else:
                site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.bound_port = 0 if self._unix_path is not None else int(runner.addresses[0][1])
        return self.bound_port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _is_local(self, request: web.Request) -> bool:
        # A unix socket is reachable only through the file system (its directory is the supervisor's
        # private runtime dir): whoever can connect is this host's sidecar, so it counts as loopback.
        return self._unix_path is not None or _is_loopback(request)

    # -- handlers -------------------------------------------------------------------------------

    async def _live(self, request: web.Request) -> web.Response:
        return web.Response(text="live\n")

    async def _ready(self, request: web.Request) -> web.Response:
        ok, reason = await _answer(self._source.ready())
        if ok:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = await self._source.metrics(request.headers.get("Accept"))
        # Raw header, not content_type=: the value carries a charset, which aiohttp rejects there.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _config_dump(self, request: web.Request) -> web.Response:
        return _json(await _answer(self._source.config_dump()))

    async def _clusters(self, request: web.Request) -> web.Response:
        return _json(await _answer(self._source.clusters()))

    async def _shutdown(self, request: web.Request) -> web.StreamResponse:
        if not self._is_local(request):
            return _forbidden()
        # Answer first, then ask for the drain: the drain may stop this server, and the caller
        # (a Kubernetes Job, a script) should still learn that its request was accepted.
        response = web.Response(text="shutting down\n")
        await response.prepare(request)
        await response.write_eof()
        try:
            self._source.request_shutdown()
        except Exception:
            log.exception("admin POST /shutdown: request_shutdown failed")
        return response

    async def _get_logging(self, request: web.Request) -> web.Response:
        return _json({"level": self._source.log_level()})

    async def _set_logging(self, request: web.Request) -> web.Response:
        if not self._is_local(request):
            return _forbidden()
        level = request.query.get("level", "").lower()
        if level not in LOG_LEVELS:
            return web.Response(status=400, text=f"level must be one of {', '.join(LOG_LEVELS)}\n")
        await _answer(self._source.set_log_level(level))
        log.info("log level set to %s via admin", level)
        return _json({"level": level})
