"""Keep-alive connection pool for one upstream endpoint.

Owns opening connections (with the cluster's connect timeout, failures mapped to the error taxonomy),
keeping idle ones (LIFO: the most recently used is the most likely still open), closing those idle past
`idle_timeout` with one lazily re-armed timer of the injected `Clock` (virtual time in tests), the
per-connection request cap, and draining on removal. The connect timeout is the loop's own
(`asyncio.timeout`): it bounds a real socket operation, and for a TLS cluster the handshake with it. Must
not know routes or retry policy, nor which protocol its connections speak: the wiring hands it a
`Connector` (the HTTP/1 codec's `UpstreamStream`), and it hands out `UpstreamStream`s, streams to this
endpoint.

Multiplexed connections (HTTP/2, `PoolSettings.multiplexed`, a `MuxConnector` the wiring hands it): a few
connections each carrying many streams. A stream goes on the oldest connection with room (below the peer's
stream limit, no GOAWAY); a new connection opens only when none has room, and requests arriving meanwhile wait
for it (and share its failure). One without streams closes after `idle_timeout`. With `negotiate`
(`protocol: auto`) and TLS, each connection's ALPN result chooses the codec (`Negotiated`).

TLS origination (a cluster with `tls:`): the wiring also hands it an `OriginTls` (implemented by
`proxy.security.origination`, which this package does not import). The pool then opens each connection
with the endpoint's `EndpointTls`: the cluster's current client context, its SNI name, the endpoint's last
session offered for resumption, and, after the handshake, the check of the upstream's identity. An upstream
that fails verification or shows the wrong identity is a connect failure (`CONNECT_REFUSED`): the
connection is closed before any request is written. TLS connections pool exactly as plain ones do; a plain
cluster's connect takes the branch it always took.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, cast

from proxy.clock import Clock, Timer
from proxy.errors import FailureKind, UpstreamError
from proxy.stream import UpstreamStream
from proxy.telemetry.metrics import ClusterTraffic

log = logging.getLogger("proxy.upstream.pool")

_UNROUTABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


# Makes the connection object for a new socket: (loop, context for errors, max response head bytes, max
# response header lines) -> an asyncio Protocol that is a UpstreamStream.
Connector = Callable[[asyncio.AbstractEventLoop, str, int, int], UpstreamStream]


def no_connector(loop: asyncio.AbstractEventLoop, context: str, max_head: int, max_headers: int) -> UpstreamStream:
    raise RuntimeError(f"{context}: no connector configured for this pool")


class MuxConnection(Protocol):
    """A connection that carries many streams at once (HTTP/2: `proxy.http.h2_client.H2ClientConnection`)."""

    closed: bool
    rx: int
    tx: int
    on_lost: Callable[[Any], None] | None
    # Streams opened over the connection's life.
    streams_opened: int
    # How long a PING may go unanswered before the connection counts as dead (the pool sets connect_timeout).
    ping_timeout: float

    async def ready(self) -> None:
        """Wait until the peer's settings (its stream limit) are known."""
        ...

    def can_open(self) -> bool:
        """Whether a new stream fits (below the peer's limit, no GOAWAY, not draining)."""
        ...

    def open_stream(self) -> UpstreamStream: ...

    @property
    def active_streams(self) -> int: ...

    def drain(self) -> None:
        """Take no new streams; close once those under way are done."""
        ...

    def close(self) -> None: ...


# Makes a multiplexed connection for a new socket: (loop, context, max response head bytes, max response header
# lines, TLS) -> an asyncio Protocol that is a MuxConnection.
MuxConnector = Callable[[asyncio.AbstractEventLoop, str, int, int, bool], MuxConnection]


class EndpointTls(Protocol):
    """TLS to one endpoint of a cluster, as its pool opens connections."""

    @property
    def server_name(self) -> str:
        """The SNI name to send ("" for none)."""
        ...

    def handshake(self) -> AbstractContextManager[ssl.SSLContext]:
        """The client context for a new connection (the cluster's current one: rotation applies to new
        connections), entered around the connect so that its handshake can resume this endpoint's last
        session."""
        ...

    def admit(self, ssl_object: ssl.SSLObject) -> str | None:
        """After the handshake: None to use the connection, or why the upstream is refused (its identity)."""
        ...

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows of this endpoint's TLS (handshakes made, resumed)."""
        ...


class OriginTls(Protocol):
    """A cluster's TLS origination: one `EndpointTls` per endpoint (made once, when its pool is)."""

    def for_endpoint(self, host: str, port: int) -> EndpointTls: ...

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows of the cluster's TLS."""
        ...


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """A cluster's `pool:` and `connect_timeout`, compiled (seconds)."""

    connect_timeout: float = 5.0
    max_idle: int = 64
    idle_timeout: float = 60.0
    max_requests_per_connection: int = 0
    # Bounds on a response head (status line + headers) and on its trailers, each on its own.
    max_head_bytes: int = 60 * 1024
    max_headers: int = 100
    # What opens a connection's protocol object (the wiring chooses the codec).
    connector: Connector = no_connector
    # TLS origination for a cluster with `tls:`; None: plain TCP.
    tls: OriginTls | None = None
    # The cluster's connection and byte counters (None: not counted, as in tests of the pool alone).
    traffic: ClusterTraffic | None = None
    # Multiplexed connections (HTTP/2): set, the pool keeps a few connections each carrying many streams,
    # and `connector` is not used.
    multiplexed: MuxConnector | None = None
    # `protocol: auto`: with TLS, each connection's ALPN result chooses `multiplexed` (h2) or `connector`; once an
    # endpoint chose h2, its streams are multiplexed.
    negotiate: bool = False


class Pool:
    """Idle keep-alive connections to one endpoint, and the means to open new ones."""

    __slots__ = ("_clock", "_closed", "_h2_chosen", "_idle", "_loop", "_mux", "_mux_idle", "_mux_pending", "_open",
                 "_timer", "_tls", "context", "host", "port", "settings")

    def __init__(self, host: str, port: int, settings: PoolSettings, context: str, clock: Clock) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.context = context
        self._loop = asyncio.get_running_loop()
        self._clock = clock
        # (connection, clock time it went idle), oldest at the left.
        self._idle: deque[tuple[UpstreamStream, float]] = deque()
        self._open: set[UpstreamStream] = set()
        self._timer: Timer | None = None
        self._closed = False
        # This endpoint's TLS (its session for resumption lives there); None for a plain cluster.
        self._tls = settings.tls.for_endpoint(host, port) if settings.tls is not None else None
        # Multiplexed connections (oldest first), and the connect under way that new streams wait for.
        self._mux: list[MuxConnection] = []
        self._mux_pending: asyncio.Future[UpstreamError | None] | None = None
        # Multiplexed connections without streams, and the clock time they last had one.
        self._mux_idle: dict[MuxConnection, float] = {}
        # `negotiate`: ALPN chose h2 for this endpoint (without `negotiate`, `multiplexed` alone decides).
        self._h2_chosen = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def open_count(self) -> int:
        return len(self._open) + len(self._mux)

    def tls_snapshot(self) -> dict[str, object] | None:
        """What /clusters shows of this endpoint's TLS; None for a plain cluster."""
        return self._tls.snapshot() if self._tls is not None else None

    def take_idle(self) -> UpstreamStream | None:
        """An idle open connection (multiplexed: a new stream on an open connection), or None (no await: the
        common case costs no coroutine hop)."""
        if self._multiplexing():
            return self._mux_stream()
        idle = self._idle
        while idle:
            conn, _ = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self) -> UpstreamStream:
        """Open a new connection, mapping failures to connect-refused / timeout / unroutable (multiplexed: a
        stream on a connection with room, opening one when none has)."""
        if self._multiplexing():
            return await self._mux_connect()
        protocol, mux = await self._open_connection(self._protocol, False)
        if mux is not None:
            return self._mux_add(mux)  # ALPN chose h2
        conn = cast(UpstreamStream, protocol)
        conn.on_idle = self._release
        conn.on_lost = self._forget
        self._open.add(conn)
        if self.settings.traffic is not None:
            self.settings.traffic.opened()
        return conn

    def _multiplexing(self) -> bool:
        settings = self.settings
        return settings.multiplexed is not None and (self._h2_chosen or not settings.negotiate)

    async def _open_connection(self, factory: Callable[[], asyncio.Protocol], multiplexed: bool,
                               ) -> tuple[asyncio.BaseProtocol, MuxConnection | None]:
        """A new connection's protocol, and the same as a multiplexed connection when it is one (`multiplexed`,
        or chosen by ALPN), once its settings arrived."""
        settings = self.settings
        protocol: asyncio.BaseProtocol
        mux: MuxConnection | None = None
        try:
            async with asyncio.timeout(settings.connect_timeout):
                if self._tls is None:
                    _, protocol = await self._loop.create_connection(factory, self.host, self.port)
                else:
                    _, protocol = await self._connect_tls(self._tls, factory)
                if isinstance(protocol, Negotiated):
                    negotiated = protocol
                    protocol = negotiated.chosen
                    multiplexed = negotiated.multiplexed
                    self._h2_chosen = self._h2_chosen or multiplexed
                if multiplexed:
                    mux = cast(MuxConnection, protocol)
                    await _ready(mux)
        except TimeoutError:
            raise UpstreamError(
                FailureKind.CONNECT_TIMEOUT,
                f"{self.context}: connect timeout after {settings.connect_timeout:g}s",
            ) from None
        except OSError as exc:  # ssl.SSLError is an OSError
            raise self._connect_error(exc) from None
        return protocol, mux

    # -- multiplexed connections (HTTP/2) ------------------------------------------------------------

    def _mux_stream(self) -> UpstreamStream | None:
        """A new stream on the oldest open connection with room for one; None when none has."""
        for conn in self._mux:
            if conn.can_open():
                self._mux_idle.pop(conn, None)
                return self._mux_open(conn)
        return None

    def _mux_open(self, conn: MuxConnection) -> UpstreamStream:
        """A stream on `conn`; the connection's last when max_requests_per_connection counts it (then it takes
        no new streams and closes once those under way are done, as an HTTP/1.1 connection closes after its last
        request)."""
        stream = conn.open_stream()
        stream.on_idle = self._mux_release
        limit = self.settings.max_requests_per_connection
        if limit and conn.streams_opened >= limit:
            conn.drain()
        return stream

    async def _mux_connect(self) -> UpstreamStream:
        """A stream on a connection with room: waits for a connect under way (its streams may fit there; its
        failure is theirs too), else opens a connection (so a burst of requests shares a few connections rather
        than opening one each)."""
        while True:
            stream = self._mux_stream()
            if stream is not None:
                return stream
            pending = self._mux_pending
            if pending is None:
                break
            await asyncio.wait([pending])
            failure = pending.result()
            if failure is not None:
                raise UpstreamError(failure.kind, failure.context)
        done: asyncio.Future[UpstreamError | None] = self._loop.create_future()
        self._mux_pending = done
        failed: UpstreamError | None = None
        try:
            _, conn = await self._open_connection(self._mux_protocol, True)
        except UpstreamError as error:
            failed = error
            raise
        finally:
            self._mux_pending = None
            done.set_result(failed)
        assert conn is not None
        return self._mux_add(conn)

    def _mux_add(self, conn: MuxConnection) -> UpstreamStream:
        """Keep a new multiplexed connection, and a stream on it."""
        conn.on_lost = self._mux_lost
        self._mux.append(conn)
        if self.settings.traffic is not None:
            self.settings.traffic.opened()
        if self._closed:
            conn.drain()
        return self._mux_open(conn)

    def _mux_protocol(self) -> asyncio.Protocol:
        settings = self.settings
        multiplexed = settings.multiplexed
        assert multiplexed is not None
        conn = multiplexed(self._loop, self.context, settings.max_head_bytes, settings.max_headers,
                           self._tls is not None)
        conn.ping_timeout = settings.connect_timeout
        return cast(asyncio.Protocol, conn)

    def _mux_release(self, stream: UpstreamStream) -> None:
        """A stream is done: the bytes its connections moved reach the cluster's counters, and a connection left
        without streams is closed after idle_timeout unless it carries one again."""
        traffic = self.settings.traffic
        now = self._clock.now()
        for conn in self._mux:
            if traffic is not None:
                traffic.add(conn.rx, conn.tx)
                conn.rx = conn.tx = 0
            if conn.active_streams == 0 and conn not in self._mux_idle and not conn.closed:
                self._mux_idle[conn] = now
        idle = self._mux_idle
        while len(idle) > self.settings.max_idle:  # max_idle_per_endpoint: the longest idle close first
            oldest = min(idle, key=idle.__getitem__)
            del idle[oldest]
            oldest.close()
        if self._mux_idle and self._timer is None:
            self._timer = self._clock.call_at(now + self.settings.idle_timeout, self._mux_sweep)

    def _mux_sweep(self) -> None:
        """Close multiplexed connections without a stream for idle_timeout."""
        self._timer = None
        cutoff = self._clock.now() - self.settings.idle_timeout
        for conn, since in list(self._mux_idle.items()):
            if conn.active_streams > 0 or conn.closed:
                del self._mux_idle[conn]
            elif since <= cutoff:
                del self._mux_idle[conn]
                conn.close()
        if self._mux_idle:
            first = min(self._mux_idle.values())
            self._timer = self._clock.call_at(first + self.settings.idle_timeout, self._mux_sweep)

    def _mux_lost(self, conn: MuxConnection) -> None:
        self._mux_idle.pop(conn, None)
        if conn in self._mux:
            self._mux.remove(conn)
        traffic = self.settings.traffic
        if traffic is not None:
            traffic.add(conn.rx, conn.tx)
            conn.rx = conn.tx = 0

    def _protocol(self) -> asyncio.Protocol:
        """The protocol factory of `create_connection`: the cluster's codec for this endpoint (with `negotiate`
        over TLS, the one ALPN chooses)."""
        settings = self.settings
        if settings.negotiate and settings.multiplexed is not None and self._tls is not None:
            return Negotiated(self._mux_protocol, self._h1_protocol)
        return self._h1_protocol()

    def _h1_protocol(self) -> asyncio.Protocol:
        settings = self.settings
        return cast(asyncio.Protocol, settings.connector(self._loop, self.context, settings.max_head_bytes,
                                                         settings.max_headers))

    async def open_unpooled(self, factory: Callable[[], asyncio.Protocol],
                            ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """A connection to this endpoint that the pool does not keep, speaking `factory`'s protocol (active
        health checks' probes): plain TCP, or for a TLS cluster exactly as the pool's own (the client context
        in force, SNI, this endpoint's session, the identity check). No timeout: the caller bounds it. Raises
        OSError (ssl.SSLError for a failed handshake) or UpstreamError (CONNECT_REFUSED: identity refused)."""
        if self._tls is None:
            return await self._loop.create_connection(factory, self.host, self.port)
        return await self._connect_tls(self._tls, factory)

    async def _connect_tls(self, tls: EndpointTls, factory: Callable[[], asyncio.Protocol],
                           ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Connect and handshake (under the caller's timeout), then admit the upstream's identity."""
        with tls.handshake() as context:
            transport, protocol = await self._loop.create_connection(
                factory, self.host, self.port, ssl=context, server_hostname=tls.server_name)
        ssl_object = transport.get_extra_info("ssl_object")
        refusal = tls.admit(ssl_object) if ssl_object is not None else "no TLS session"
        if refusal is not None:
            transport.abort()
            error = UpstreamError(FailureKind.CONNECT_REFUSED, f"{self.context}: {refusal}")
            log.warning("%s", error.context)
            raise error
        return transport, protocol

    def _connect_error(self, exc: OSError) -> UpstreamError:
        """A failed connect (or TLS handshake) in the error taxonomy."""
        context = self.context
        if isinstance(exc, ssl.SSLError):
            error = UpstreamError(FailureKind.CONNECT_REFUSED, f"{context}: {_handshake_failure(exc)}")
            log.warning("%s", error.context)
            return error
        if isinstance(exc, ConnectionRefusedError):
            return UpstreamError(FailureKind.CONNECT_REFUSED, f"{context}: connect refused")
        if isinstance(exc, socket.gaierror):
            return UpstreamError(FailureKind.UNROUTABLE, f"{context}: cannot resolve: {exc.strerror}")
        kind = FailureKind.UNROUTABLE if exc.errno in _UNROUTABLE else FailureKind.CONNECT_REFUSED
        return UpstreamError(kind, f"{context}: connect failed: {exc.strerror or exc}")

    def _release(self, conn: UpstreamStream) -> None:
        settings = self.settings
        # Each exchange's bytes reach the counters as it ends (once per request, not per read).
        traffic = settings.traffic
        if traffic is not None:
            traffic.add(conn.rx, conn.tx)
            conn.rx = conn.tx = 0
        if (
            self._closed
            or len(self._idle) >= settings.max_idle
            or (
                settings.max_requests_per_connection
                and conn.requests_sent >= settings.max_requests_per_connection
            )
        ):
            self._forget(conn)
            conn.close()
            return
        now = self._clock.now()
        self._idle.append((conn, now))
        if self._timer is None:
            self._timer = self._clock.call_at(now + settings.idle_timeout, self._sweep)

    def _forget(self, conn: UpstreamStream) -> None:
        self._open.discard(conn)
        # Closed (or about to be): what it moved since it was last released. Also runs for a connection
        # `_release` already reported and then closed, and again when it is lost: then it adds zeros.
        traffic = self.settings.traffic
        if traffic is not None:
            traffic.add(conn.rx, conn.tx)
            conn.rx = conn.tx = 0

    def _sweep(self) -> None:
        """Close connections idle longer than idle_timeout (oldest are at the left)."""
        self._timer = None
        cutoff = self._clock.now() - self.settings.idle_timeout
        idle = self._idle
        while idle and (idle[0][1] <= cutoff or idle[0][0].closed):
            conn, _ = idle.popleft()
            self._forget(conn)
            conn.close()
        if idle:
            self._timer = self._clock.call_at(idle[0][1] + self.settings.idle_timeout, self._sweep)

    def close(self) -> None:
        """Close idle connections now; busy ones close when their exchange ends."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._idle:
            conn, _ = self._idle.pop()
            conn.close()
        self._open.clear()
        self._mux_idle.clear()
        for mux in list(self._mux):
            mux.drain()


class Negotiated(asyncio.Protocol):
    """A TLS connection's protocol until its handshake is done (asyncio calls `connection_made` then): ALPN `h2`
    hands the transport to a multiplexed connection, anything else to the HTTP/1.1 codec."""

    def __init__(self, h2: Callable[[], asyncio.Protocol], http1: Callable[[], asyncio.Protocol]) -> None:
        self._h2 = h2
        self._http1 = http1
        self.multiplexed = False
        self.chosen: asyncio.Protocol = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        self.multiplexed = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        self.chosen = self._h2() if self.multiplexed else self._http1()
        transport.set_protocol(self.chosen)
        self.chosen.connection_made(transport)


async def _ready(conn: MuxConnection) -> None:
    """Wait for a new multiplexed connection's settings; closed when they do not come."""
    try:
        await conn.ready()
    except BaseException:
        conn.close()
        raise


def _handshake_failure(exc: ssl.SSLError) -> str:
    """A failed TLS handshake in a few words (OpenSSL's own are `[SSL: X] x (_ssl.c:1006)`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: upstream certificate not trusted ({exc.verify_message})"
    reason = (exc.reason or "").lower().replace("_", " ")
    if exc.reason == "WRONG_VERSION_NUMBER":
        # What a plain-text answer to a ClientHello looks like.
        return "TLS handshake failed: the upstream does not speak TLS (wrong version number)"
    if "alert" in reason:
        return f"TLS handshake failed: the upstream refused it ({reason})"
    return f"TLS handshake failed: {reason or exc}"
