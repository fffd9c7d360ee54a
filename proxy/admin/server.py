"""The admin HTTP server: health, readiness, metrics, dumps, shutdown, log level.

Owns: the admin routes and their status codes (the user contract "Admin endpoints"), the loopback-only
rule for the endpoints that change state, the browser guards on TCP (a `Host` that is a DNS name other
than localhost is refused, against DNS rebinding; a state change carrying `Origin` is refused, against
cross-site requests), and the guarantee that no traceback reaches a client.

Must not: know how the sidecar is built. Everything it shows comes from an `AdminSource` the
assembly hands in; it imports no listener, cluster, metrics or config module, so it can be tested
with a fake source and cannot reach into the request path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import re
from collections.abc import Awaitable
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import parse_qs

from proxy.http.headers import new_request_id, stamp_request_id
from proxy.http.server import Exchange, ServerConnection, create_protocol_factory
from proxy.http.settings import ServerSettings
from proxy.local_reply import LocalReply
from proxy.message import Headers, ResponseHead, reason_phrase
from proxy.stream import ByteCounter

log = logging.getLogger(__name__)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")


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


# A Host port: digits, possibly none ("localhost:" is valid URI syntax).
_PORT = re.compile(r"(?::[0-9]{0,5})?")


def host_allowed(host: bytes) -> bool:
    """Whether an admin request's Host passes the DNS-rebinding guard.

    A rebinding page reaches the admin port through a name its author controls, and the browser sends that
    name as Host; it cannot make the browser send an IP literal or `localhost` (which never resolves
    through the attacker's DNS). So: allowed are an IPv4 literal, a bracketed IPv6 literal, `localhost` in
    any case and with an optional trailing dot, each with an optional port, and no Host at all (an HTTP/1.0
    client; browsers always send one, and HTTP/1.1 without Host is a 400 before this). Anything else is
    refused: other names, `*.localhost`, unbracketed IPv6, non-canonical IPv4 such as `127.1`.
    """
    text = host.decode("latin-1").lower()
    if not text:
        return True
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not _PORT.fullmatch(text, end + 1):
            return False
        try:
            ipaddress.IPv6Address(text[1:end])
        except ValueError:
            return False
        return True
    name = text.partition(":")[0]
    if not _PORT.fullmatch(text, len(name)):
        return False  # e.g. unbracketed IPv6: a second colon is not a port
    if name in ("localhost", "localhost."):
        return True
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _is_loopback(peer_ip: bytes) -> bool:
    # The transport's peer, never X-Forwarded-For: a header must not grant shutdown rights.
    try:
        addr = ipaddress.ip_address(peer_ip.decode("latin-1").split("%", 1)[0])
    except ValueError:
        return False  # unknown peer: refuse
    # On a dual-stack "::" bind an IPv4 loopback client appears as ::ffff:127.x.y.z.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json; charset=utf-8"


class _Answer:
    """One admin response: status, content type, body."""

    __slots__ = ("body", "content_type", "extra", "status")

    def __init__(self, status: int, body: bytes | str, content_type: bytes = _TEXT,
                 extra: Headers | None = None) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.extra = extra or []


def _json(data: Any) -> _Answer:
    # default=str: a dump holding a Path or an enum should still render, not fail the whole page.
    return _Answer(200, json.dumps(data, indent=2, default=str) + "\n", _JSON)


def _forbidden() -> _Answer:
    return _Answer(403, "forbidden: only loopback clients may do this\n")


_BAD_HOST = "forbidden: Host must be localhost or an IP address (the admin port refuses DNS names: rebinding)\n"
_CROSS_SITE = "forbidden: a state change may not carry an Origin header (the admin port refuses browsers)\n"
# The methods that change nothing here; any other one carrying Origin is refused.
_SAFE_METHODS = (b"GET", b"HEAD")


# path -> the methods it answers (anything else on a known path is 405 with Allow).
_ROUTES: dict[str, tuple[bytes, ...]] = {
    "/live": (b"GET", b"HEAD"), "/ready": (b"GET", b"HEAD"), "/metrics": (b"GET", b"HEAD"),
    "/config_dump": (b"GET", b"HEAD"), "/clusters": (b"GET", b"HEAD"), "/shutdown": (b"POST",),
    "/logging": (b"GET", b"HEAD", b"POST"),
}


class AdminServer:
    """Serves the admin endpoints for `source` on host:port (port 0 picks a free port), or on the unix
    socket `unix_path` instead (a worker's admin view, gathered by its supervisor).

    It runs on the sidecar's own HTTP/1.1 codec (`proxy.http.server`), not aiohttp.web: the admin
    traffic is a few probes and scrapes, and aiohttp.web alone added ~12 MB to every sidecar's idle RSS
    (docs/decisions/0007-admin-on-the-codec.md)."""

    def __init__(self, source: AdminSource, host: str, port: int, *, unix_path: str | None = None) -> None:
        self._source = source
        self._host = host
        self._port = port
        self._unix_path = unix_path
        self._server: asyncio.Server | None = None
        self.bound_port: int | None = None
        # The codec's Listener protocol: small limits, admin requests are tiny.
        self.settings = ServerSettings(max_head_bytes=16 * 1024, max_headers=50, header_read_timeout=10.0,
                                       idle_timeout=60.0, max_request_body=64 * 1024, max_requests_in_flight=64)
        self.in_flight = 0
        self.rng = random.Random()
        self._connections: set[ServerConnection] = set()
        # The codec's `Listener.traffic`: the admin port's bytes are counted nowhere.
        self.traffic = ByteCounter()

    async def start(self) -> int:
        """Bind and serve; return the bound port (0 on a unix socket)."""
        if self._server is not None:
            raise RuntimeError("admin server already started")
        loop = asyncio.get_running_loop()
        factory = create_protocol_factory(self)
        if self._unix_path is not None:
            self._server = await loop.create_unix_server(factory, self._unix_path)
            self.bound_port = 0
        else:
            self._server = await loop.create_server(factory, self._host or None, self._port, reuse_address=True)
            self.bound_port = int(self._server.sockets[0].getsockname()[1])
        return self.bound_port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._connections):
            conn.drain()
        # Admin requests are tiny: give in-flight ones a moment, then cut what is left.
        for _ in range(40):
            if not self._connections:
                break
            await asyncio.sleep(0.05)
        for conn in list(self._connections):
            conn.abort()

    # -- the codec's Listener protocol --------------------------------------------------------------

    def connection_opened(self, conn: ServerConnection) -> None:
        self._connections.add(conn)

    def connection_closed(self, conn: ServerConnection) -> None:
        self._connections.discard(conn)

    def refuse(self, exchange: Exchange, reply: LocalReply | None) -> None:
        exchange.request_id = new_request_id(self.rng)
        if reply is not None:
            exchange.send_local(reply)
        else:
            exchange.answer_cancelled()

    async def handle(self, exchange: Exchange) -> None:
        head = exchange.head
        exchange.request_id = stamp_request_id(head.headers, self.rng)
        path = head.path
        methods = _ROUTES.get(path)
        refusal = self._browser_refusal(exchange)
        if refusal is not None:
            answer = refusal
        elif methods is None:
            answer = _Answer(404, f"not found: {path}\n")
        elif head.method not in methods:
            answer = _Answer(405, "method not allowed\n", extra=[(b"allow", b", ".join(methods))])
        else:
            try:
                answer = await self._route(exchange, path, head.method)
            except Exception:
                log.exception("admin %s %s failed", head.method.decode("latin-1"), path)
                answer = _Answer(500, f"internal error serving {path}; see the sidecar log\n")
        self._send(exchange, answer)
        if path == "/shutdown" and answer.status == 200:
            # Answer first, then ask for the drain: the drain may stop this server, and the caller
            # (a Kubernetes Job, a script) should still learn that its request was accepted.
            try:
                self._source.request_shutdown()
            except Exception:
                log.exception("admin POST /shutdown: request_shutdown failed")

    @staticmethod
    def _send(exchange: Exchange, answer: _Answer) -> None:
        headers: Headers = [(b"content-type", answer.content_type), *answer.extra]
        exchange.start_response(ResponseHead(answer.status, reason_phrase(answer.status), headers),
                                len(answer.body), False, answer.body)
        exchange.end_response()

    def _browser_refusal(self, exchange: Exchange) -> _Answer | None:
        """A 403 for what only a browser driven by another site would send; None to carry on.

        Not on a unix socket: no browser can reach one, and the supervisor addresses its workers' sockets
        by made-up names (`http://worker-0/...`)."""
        if self._unix_path is not None:
            return None
        head = exchange.head
        if not host_allowed(head.host_header):
            log.warning("admin: refused %s %s with Host %r: not localhost or an IP address",
                        head.method.decode("latin-1"), head.path[:100], head.host_header[:100].decode("latin-1"))
            return _Answer(403, _BAD_HOST)
        # Before the loopback rule: a browser on this very host is a loopback client. A browser marks every
        # cross-site (and same-site) POST with Origin; curl, kubelet and scripts send none.
        origin = head.header(b"origin") if head.method not in _SAFE_METHODS else None
        if origin is not None:
            log.warning("admin: refused %s %s carrying Origin %r", head.method.decode("latin-1"),
                        head.path[:100], origin[:100].decode("latin-1"))
            return _Answer(403, _CROSS_SITE)
        return None

    def _is_local(self, exchange: Exchange) -> bool:
        # A unix socket is reachable only through the file system (its directory is the supervisor's
        # private runtime dir): whoever can connect is this host's sidecar, so it counts as loopback.
        return self._unix_path is not None or _is_loopback(exchange.peer_ip)

    async def _route(self, exchange: Exchange, path: str, method: bytes) -> _Answer:
        source = self._source
        if path == "/live":
            return _Answer(200, "live\n")
        if path == "/ready":
            ok, reason = await _answer(source.ready())
            return _Answer(200, "ready\n") if ok else _Answer(503, f"not ready: {reason}\n")
        if path == "/metrics":
            accept = exchange.head.header(b"accept")
            body, content_type = await source.metrics(accept.decode("latin-1") if accept is not None else None)
            return _Answer(200, body, content_type.encode())
        if path == "/config_dump":
            return _json(await _answer(source.config_dump()))
        if path == "/clusters":
            return _json(await _answer(source.clusters()))
        if path == "/shutdown":
            return _Answer(200, "shutting down\n") if self._is_local(exchange) else _forbidden()
        if method != b"POST":
            return _json({"level": source.log_level()})
        if not self._is_local(exchange):
            return _forbidden()
        query = parse_qs(exchange.head.query.decode("latin-1"))
        level = (query.get("level") or [""])[0].lower()
        if level not in LOG_LEVELS:
            return _Answer(400, f"level must be one of {', '.join(LOG_LEVELS)}\n")
        await _answer(source.set_log_level(level))
        log.info("log level set to %s via admin", level)
        return _json({"level": level})
