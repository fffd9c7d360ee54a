"""Keep-alive connection pool for one upstream endpoint.

Owns opening connections (with the cluster's connect timeout, failures mapped to the error taxonomy),
keeping idle ones (LIFO: the most recently used is the most likely still open), closing those idle past
`idle_timeout` with one lazily re-armed timer of the injected `Clock` (virtual time in tests), the
per-connection request cap, and draining on removal. The connect timeout is the loop's own
(`asyncio.timeout`): it bounds a real socket operation. Must not know routes or retry policy, nor which
protocol its connections speak: the wiring hands it a `Connector` (today the HTTP/1 codec's
`UpstreamStream`), and it hands out `UpstreamStream`s, streams to this endpoint.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from proxy.clock import Clock, Timer
from proxy.errors import FailureKind, UpstreamError
from proxy.stream import UpstreamStream

_UNROUTABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


# Makes the connection object for a new socket: (loop, context for errors, max response head bytes, max
# response header lines) -> an asyncio Protocol that is a UpstreamStream.
Connector = Callable[[asyncio.AbstractEventLoop, str, int, int], UpstreamStream]


def no_connector(loop: asyncio.AbstractEventLoop, context: str, max_head: int, max_headers: int) -> UpstreamStream:
    raise RuntimeError(f"{context}: no connector configured for this pool")


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


class Pool:
    """Idle keep-alive connections to one endpoint, and the means to open new ones."""

    __slots__ = ("_clock", "_closed", "_idle", "_loop", "_open", "_timer", "context", "host", "port", "settings")

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

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def take_idle(self) -> UpstreamStream | None:
        """An idle open connection, or None (no await: the common case costs no coroutine hop)."""
        idle = self._idle
        while idle:
            conn, _ = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self) -> UpstreamStream:
        """Open a new connection, mapping failures to connect-refused / timeout / unroutable."""
        loop = self._loop
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                settings = self.settings
                connector = settings.connector
                _, protocol = await loop.create_connection(
                    lambda: cast(asyncio.Protocol, connector(loop, self.context, settings.max_head_bytes,
                                                             settings.max_headers)),
                    self.host, self.port
                )
                conn = cast(UpstreamStream, protocol)
        except TimeoutError:
            raise UpstreamError(
                FailureKind.CONNECT_TIMEOUT,
                f"{self.context}: connect timeout after {self.settings.connect_timeout:g}s",
            ) from None
        except ConnectionRefusedError:
            raise UpstreamError(FailureKind.CONNECT_REFUSED, f"{self.context}: connect refused") from None
        except socket.gaierror as exc:
            raise UpstreamError(
                FailureKind.UNROUTABLE, f"{self.context}: cannot resolve: {exc.strerror}"
            ) from None
        except OSError as exc:
            kind = FailureKind.UNROUTABLE if exc.errno in _UNROUTABLE else FailureKind.CONNECT_REFUSED
            raise UpstreamError(kind, f"{self.context}: connect failed: {exc.strerror or exc}") from None
        conn.on_idle = self._release
        conn.on_lost = self._forget
        self._open.add(conn)
        return conn

    def _release(self, conn: UpstreamStream) -> None:
        settings = self.settings
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
