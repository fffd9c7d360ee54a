"""The request path, assembled: listener edge -> router -> route stages -> cluster -> endpoint attempt.

Owns the wiring of the stages (the only place that composes them), each compiled once per route and
cluster when a config is loaded, never per request. The order, and why:
- edge (request id, forwarding headers, trace extract, timer) first, so every answer, local ones
  included, carries the request id and is counted;
- router next: the route table is a snapshot read once per request, so a reload applies from the next
  request and in-flight ones finish on the config they started with;
- route deadline above the attempt, so it bounds the whole exchange (later: all retries and backoff);
- split picks the cluster once per logical request, before any retry;
- attempt: pick an endpoint, take a pooled connection, inject a new span id, send, splice the response.
Must not parse bytes (the codec does) or hold policy state of its own (the concern packages do).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence

from proxy.errors import UpstreamError
from proxy.filters.headers import HeaderRewriter
from proxy.filters.rewrite import Rewriter
from proxy.filters.trace import TraceContext, TracePropagator
from proxy.http.headers import X_FORWARDED_FOR, X_FORWARDED_PROTO, serialize_request
from proxy.http.server import Exchange, ServerConnection, ServerSettings
from proxy.local_reply import Cause, LocalReply, failure_reply, local_reply
from proxy.routing.split import Split
from proxy.routing.table import RouteTable
from proxy.telemetry.metrics import Metrics, RouteMetrics
from proxy.upstream.cluster import Cluster

log = logging.getLogger("proxy.outbound")

# Methods whose request may be sent again on a fresh connection when a pooled one turns out stale.
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"))
WEBSOCKET_HEADERS = b"connection: upgrade\r\nupgrade: websocket\r\n"
CLIENT_CLOSED = 499  # nginx's convention for "the client went away before the answer" in metrics


class Target:
    """One (route, cluster) pair: the cluster and the metric children bound for the pair."""

    __slots__ = ("cluster", "metrics")

    def __init__(self, cluster: Cluster, metrics: RouteMetrics) -> None:
        self.cluster = cluster
        self.metrics = metrics


class RoutePath:
    """A route's compiled stages."""

    __slots__ = ("name", "request_rules", "response_rules", "rewriter", "split", "targets", "timeout")

    def __init__(
        self,
        name: str,
        split: Split,
        targets: dict[str, Target],
        timeout: float | None,
        request_rules: HeaderRewriter | None,
        response_rules: HeaderRewriter | None,
        rewriter: Rewriter | None,
    ) -> None:
        self.name = name
        self.split = split
        self.targets = targets
        self.timeout = timeout
        self.request_rules = request_rules
        self.response_rules = response_rules
        self.rewriter = rewriter


class Router:
    """An immutable snapshot: the route table and each route's compiled path (swapped whole on reload)."""

    __slots__ = ("no_route", "paths", "table")

    def __init__(self, table: RouteTable, paths: Sequence[RoutePath], no_route: RouteMetrics) -> None:
        self.table = table
        self.paths = tuple(paths)
        self.no_route = no_route


def build_router(
    listener_name: str, table: RouteTable, clusters: dict[str, Cluster], metrics: Metrics
) -> Router:
    """Compile every route of a listener once: header rules, rewrite, split targets, metric children."""
    paths: list[RoutePath] = []
    for route in table.routes:
        config = route.config
        targets = {
            name: Target(clusters[name], metrics.for_route(listener_name, route.name, name))
            for name in route.split.names
        }
        rules = config.headers
        paths.append(
            RoutePath(
                name=route.name,
                split=route.split,
                targets=targets,
                timeout=config.timeout,
                request_rules=HeaderRewriter.from_config(rules.request if rules else None),
                response_rules=HeaderRewriter.from_config(rules.response if rules else None),
                rewriter=Rewriter.from_config(config.rewrite, config.match),
            )
        )
    return Router(table, paths, metrics.for_local(listener_name))


class OutboundListener:
    """A listener's request handler and state (implements the codec's `Listener` protocol)."""

    __slots__ = (
        "_conn_gauge",
        "_connections",
        "_forwarded_proto",
        "_loop",
        "_rng",
        "in_flight",
        "name",
        "router",
        "settings",
        "trace",
    )

    def __init__(
        self,
        name: str,
        settings: ServerSettings,
        router: Router,
        trace: TracePropagator,
        metrics: Metrics,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.settings = settings
        self.router = router
        self.trace = trace
        self.in_flight = 0
        self._rng = rng
        self._loop = asyncio.get_running_loop()
        self._connections: set[ServerConnection] = set()
        self._conn_gauge = metrics.downstream_connections(name)
        self._forwarded_proto = settings.scheme

    # -- Listener protocol -------------------------------------------------------------------------

    def connection_opened(self, conn: ServerConnection) -> None:
        self._connections.add(conn)
        self._conn_gauge.inc()

    def connection_closed(self, conn: ServerConnection) -> None:
        self._connections.discard(conn)
        self._conn_gauge.dec()

    def local_reply_sent(self, exchange: Exchange, reply: LocalReply) -> None:
        """Protocol-level replies (malformed requests) never reach `handle`: count them here."""
        if not exchange.head.method:
            self.router.no_route.record(reply.head.status, self._loop.time() - exchange.started_at)

    @property
    def connections(self) -> set[ServerConnection]:
        return self._connections

    def drain(self) -> None:
        for conn in list(self._connections):
            conn.drain()

    async def handle(self, exchange: Exchange) -> None:
        """Serve one request: the edge, then the route's stages."""
        settings = self.settings
        if settings.max_requests_in_flight and self.in_flight >= settings.max_requests_in_flight:
            self._answer_local(
                exchange, self.router.no_route, local_reply(Cause.LISTENER_LIMIT, "listener limit")
            )
            return
        self.in_flight += 1
        try:
            await self._serve(exchange)
        finally:
            self.in_flight -= 1

    # -- the stages --------------------------------------------------------------------------------

    async def _serve(self, exchange: Exchange) -> None:
        router = self.router  # one snapshot for the whole request, whatever reloads happen meanwhile
        head = exchange.head
        route = router.table.find(head)
        if route is None:
            self._answer_local(
                exchange,
                router.no_route,
                local_reply(Cause.NO_ROUTE, f"no route for {head.authority or '-'}{head.path}"),
            )
            return
        path = router.paths[route.index]
        target = path.targets[path.split.pick(self._rng)]
        # Edge headers, once per logical request.
        headers = head.headers
        _append_forwarded(headers, exchange.peer_ip, self._forwarded_proto)
        if path.rewriter is not None:
            path.rewriter.apply(head)
        if path.request_rules is not None:
            path.request_rules.apply(headers)
        trace_ctx = self.trace.extract(headers)
        code = 0
        try:
            if path.timeout is None:
                code = await self._attempt(exchange, path, target, trace_ctx)
            else:
                try:
                    async with asyncio.timeout_at(exchange.started_at + path.timeout):
                        code = await self._attempt(exchange, path, target, trace_ctx)
                except TimeoutError:
                    code = self._timed_out(exchange, path)
        except asyncio.CancelledError:
            code = CLIENT_CLOSED
            raise
        finally:
            target.metrics.record(code or CLIENT_CLOSED, self._loop.time() - exchange.started_at)

    def _timed_out(self, exchange: Exchange, path: RoutePath) -> int:
        if not exchange.response_started:
            reply = local_reply(Cause.TIMEOUT, f"route {path.name}: timeout after {path.timeout:g}s")
            exchange.send_local(reply)
            return reply.head.status
        # The response has started: the only honest signal left is a broken connection.
        exchange.abort()
        return exchange.response_status

    def _answer_local(self, exchange: Exchange, metrics: RouteMetrics, reply: LocalReply) -> None:
        exchange.send_local(reply)
        metrics.record(reply.head.status, self._loop.time() - exchange.started_at)

    async def _attempt(
        self, exchange: Exchange, path: RoutePath, target: Target, trace_ctx: TraceContext
    ) -> int:
        """One attempt on one endpoint; returns the status code the client got."""
        cluster = target.cluster
        endpoint = cluster.balancer.pick()
        if endpoint is None:
            reply = local_reply(Cause.UNAVAILABLE, f"cluster {cluster.name}: no endpoints")
            exchange.send_local(reply)
            return reply.head.status
        head = exchange.head
        headers = head.headers
        self.trace.inject(headers, trace_ctx)
        body = exchange.body
        framing = b""
        whole: bytes | None = None
        if body is not None:
            if body.chunked:
                framing = b"transfer-encoding: chunked\r\n"
            else:
                framing = b"content-length: %d\r\n" % (body.length or 0)
            if not exchange.expect_continue:
                whole = body.take_complete()
        if exchange.websocket:
            framing += WEBSOCKET_HEADERS
        request = serialize_request(head, headers, framing)
        endpoint.in_flight += 1
        endpoint.requests += 1
        conn = None
        try:
            fresh = False
            while True:
                conn = None if fresh else endpoint.pool.take_idle()
                if conn is None:
                    conn = await endpoint.pool.connect()
                conn.send(request, body is not None and body.chunked, exchange.head_only, whole)
                if body is not None and whole is None:
                    exchange.send_continue()
                    # The upstream's write buffer bounds the streamed body: it pauses the client's socket.
                    conn.set_body_reader(exchange.conn)
                    body.attach(conn)
                try:
                    ready = await conn.response_head()
                    break
                except UpstreamError as error:
                    # A pooled connection the upstream closed while idle: send once more on a new one
                    # (not a retry) when nothing can have been processed twice.
                    if (
                        error.stale
                        and not fresh
                        and head.method in IDEMPOTENT
                        and (body is None or whole is not None)
                    ):
                        fresh = True
                        continue
                    raise
            response = ready.head
            if path.response_rules is not None:
                path.response_rules.apply(response.headers)
            if response.status == 101:
                if not exchange.websocket:
                    conn.abort()
                    reply = local_reply(Cause.UPSTREAM_PROTOCOL, f"{conn.context}: unexpected 101")
                    exchange.send_local(reply)
                    return reply.head.status
                exchange.start_response(response, None, True)
                exchange.start_tunnel(conn)
                conn.start_tunnel(exchange.conn)
                conn = None  # the tunnel owns it now
                return 101
            exchange.start_response(response, ready.content_length, ready.no_body, conn.take_body())
            if not conn.attach(exchange):
                await conn.response_done()
            exchange.end_response()
            conn.finish(reusable=body is None or body.complete)
            conn = None
            return response.status
        except UpstreamError as error:
            endpoint.failures += 1
            if exchange.response_started:
                exchange.abort()
                return exchange.response_status
            reply = failure_reply(error.kind, error.context)
            exchange.send_local(reply)
            return reply.head.status
        finally:
            endpoint.in_flight -= 1
            if body is not None:
                body.detach()
            if conn is not None:
                # Cancelled (client gone or deadline) or failed mid-way: this connection's state is unknown.
                conn.detach()
                conn.abort()


def _append_forwarded(headers: list[tuple[bytes, bytes]], peer_ip: bytes, proto: bytes) -> None:
    """x-forwarded-for gets the peer appended; x-forwarded-proto is kept, or set to the listener's scheme."""
    forwarded_for = -1
    has_proto = False
    for index, (name, _) in enumerate(headers):
        if name == X_FORWARDED_FOR:
            forwarded_for = index
        elif name == X_FORWARDED_PROTO:
            has_proto = True
    if forwarded_for >= 0:
        name, value = headers[forwarded_for]
        headers[forwarded_for] = (name, value + b", " + peer_ip)
    elif peer_ip:
        headers.append((X_FORWARDED_FOR, peer_ip))
    if not has_proto:
        headers.append((X_FORWARDED_PROTO, proto))
