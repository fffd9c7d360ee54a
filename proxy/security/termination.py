"""TLS termination for a listener: the handshake of each accepted connection, before any HTTP.

Owns `TlsTermination` (one per TLS listener: its `ServerTls`, its handshake-error counters, the
`x-forwarded-client-cert` value of each connection) and `TlsAcceptor`, the protocol a TLS listener's socket
is accepted with. The acceptor runs `loop.start_tls` itself rather than letting `create_server(ssl=...)`
do it, so that it controls a failed handshake: it is counted in `sidecar_tls_handshake_errors_total
{listener,reason}` (one of `HANDSHAKE_ERROR_REASONS`), the connection is closed, and no other connection
notices; a handshake that does not finish within the listener's `header_read_timeout` (a client that
connects and sends nothing) fails as `handshake_timeout`. On success it reads the peer's SPIFFE ID once,
hands it (and the connection's XFCC value) to the HTTP protocol, and only then calls its
`connection_made` with the TLS transport: the codec above sees a connection like any other, with
`peer_identity` set.

Must not: parse HTTP (the codec does), import the codec (it gets a factory of `IdentifiedProtocol`s), or do
anything per request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

from proxy.security.tls import ServerTls, handshake_error_reason, peer_cert_sha256, peer_identity

if TYPE_CHECKING:
    from prometheus_client import Counter

    from proxy.telemetry.metrics import Metrics

log = logging.getLogger("proxy.security.termination")


class Identified(Protocol):
    """What the HTTP protocol a terminated connection is handed to has: it is told who the peer is (the
    codec's `ServerConnection` copies both onto every request of the connection)."""

    peer_identity: str
    forwarded_client_cert: bytes


class TlsTermination:
    """A TLS listener's termination: its material, error counters and identity header."""

    def __init__(self, listener: str, tls: ServerTls, metrics: Metrics | None = None) -> None:
        self.listener = listener
        self.tls = tls
        self._metrics = metrics
        # Bound on first use: a listener that never sees a failure exposes no series for it.
        self._errors: dict[str, Counter] = {}
        # Set while the listener drains: a handshake that completes afterwards is closed, not served.
        self.draining = False
        # The handshakes under way (strong references to their tasks; cancelled by `close`).
        self.handshakes: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """The listener stops (drain): handshakes under way are abandoned, later ones closed at once."""
        self.draining = True
        for task in list(self.handshakes):
            task.cancel()

    def failed(self, error: BaseException | None) -> str:
        """Count a failed handshake; returns its reason."""
        reason = handshake_error_reason(error)
        if self._metrics is not None:
            counter = self._errors.get(reason)
            if counter is None:
                counter = self._errors[reason] = self._metrics.tls_handshake_errors(self.listener, reason)
            counter.inc()
        return reason

    def client_cert_header(self, identity: str, ssl_object: ssl.SSLObject | None) -> bytes:
        """The `x-forwarded-client-cert` value of a connection (Envoy's format), b"" when none is sent: only a
        listener that requires client certificates vouches for its callers."""
        if not self.tls.require_client_cert or ssl_object is None:
            return b""
        digest = peer_cert_sha256(ssl_object)
        value = f"By={self.tls.identity};Hash={digest};URI={identity}"
        return value.encode("latin-1", "replace")


class TlsAcceptor(asyncio.Protocol):
    """The protocol a TLS listener's connection starts with: handshake, then hand over to `protocol`.

    Two orderings matter. The handshake starts inside `connection_made` (`start_tls` run to its first
    suspension there, see `_begin`): uvloop starts reading a new socket right after `connection_made`
    returns, whatever `pause_reading` said, so a handshake started from a task a loop turn later could find
    its ClientHello already read by the wrong protocol. And the acceptor stays the TLS transport's protocol
    until the hand-over: asyncio's TLS protocol delivers the first application bytes in the same step that
    completes the handshake, before `start_tls` returns (uvloop's a step later), and the HTTP protocol must
    not see a byte before it knows who the peer is. Those bytes (one read's worth) are kept here and handed
    over after its `connection_made`."""

    __slots__ = ("_early", "_eof", "_lost", "_protocol", "_termination", "_timeout")

    def __init__(self, termination: TlsTermination, protocol: asyncio.Protocol, handshake_timeout: float) -> None:
        self._termination = termination
        # An `Identified` asyncio protocol (the codec's connection), started once the handshake succeeds.
        self._protocol = protocol
        # uvloop refuses a zero timeout: a listener without a header read timeout gets uvloop's default (60 s).
        self._timeout = handshake_timeout if handshake_timeout > 0 else None
        self._lost = False
        self._eof = False
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        termination = self._termination
        tcp = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        coro = loop.start_tls(tcp, self, termination.tls.context, server_side=True,
                              ssl_handshake_timeout=self._timeout)
        try:
            # start_tls up to its first suspension: the TLS protocol is the socket's protocol from here on.
            pending = coro.send(None)
        except StopIteration:  # pragma: no cover - start_tls always waits for the handshake
            raise RuntimeError("start_tls finished without a handshake") from None
        except (OSError, ValueError) as exc:
            self._fail(tcp, exc)
            return
        task = loop.create_task(self._handshake(tcp, coro, pending))
        termination.handshakes.add(task)
        task.add_done_callback(termination.handshakes.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True  # between the handshake's end and the hand-over

    def data_received(self, data: bytes) -> None:
        self._early.append(data)  # between the handshake's end and the hand-over

    def eof_received(self) -> bool | None:
        self._eof = True
        return None

    def _fail(self, transport: asyncio.Transport, error: BaseException | None) -> None:
        termination = self._termination
        reason = termination.failed(error)
        log.debug("listener %s: TLS handshake failed (%s): %s", termination.listener, reason, error)
        transport.abort()

    async def _handshake(self, transport: asyncio.Transport, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        """The rest of `start_tls` (begun in connection_made), then the hand-over to the HTTP protocol."""
        try:
            secured = await _resume(coro, pending)
        except (OSError, EOFError) as exc:  # ssl.SSLError, a reset, or the handshake timeout
            self._fail(transport, exc)
            return
        except asyncio.CancelledError:
            transport.abort()  # the listener stopped while this handshake was under way
            raise
        if secured is None or secured.is_closing() or secured.get_extra_info("ssl_object") is None:
            self._fail(transport, None)  # closed under the handshake without an error
            return
        if self._lost:
            return  # the client left right after a good handshake
        self._hand_over(secured)

    def _hand_over(self, secured: asyncio.Transport) -> None:
        termination = self._termination
        protocol = self._protocol
        ssl_object: ssl.SSLObject | None = secured.get_extra_info("ssl_object")
        identity = peer_identity(ssl_object)
        identified = cast(Identified, protocol)
        identified.peer_identity = identity
        identified.forwarded_client_cert = termination.client_cert_header(identity, ssl_object)
        if termination.draining:
            secured.close()
            return
        secured.set_protocol(protocol)
        protocol.connection_made(secured)
        if self._early:
            early, self._early = self._early, []
            protocol.data_received(b"".join(early))
        if self._eof:
            protocol.eof_received()


async def _resume(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    """Drive a coroutine that was started by hand (`send(None)` returned `pending`, the future it waits on) to
    its end, as a Task would: wait for the future, then resume the coroutine, which reads the future's result
    (or raises its exception) itself. Cancelled meanwhile: the coroutine is closed (start_tls then closes
    the transport it made)."""
    try:
        while True:
            await asyncio.wait((pending,))
            try:
                pending = coro.send(None)
            except StopIteration as done:
                return done.value
    except asyncio.CancelledError:
        coro.close()
        raise


def acceptor_factory(termination: Callable[[], TlsTermination | None], protocol: Callable[[], asyncio.Protocol],
                     handshake_timeout: Callable[[], float]) -> Callable[[], asyncio.Protocol]:
    """The protocol factory of a listener socket: each connection is handed to `protocol` directly, or through
    a `TlsAcceptor` when the listener's current `termination()` is not None (a reload may add or remove TLS
    on a listener without rebinding it). `handshake_timeout()` is read per connection for the same reason."""

    def factory() -> asyncio.Protocol:
        current = termination()
        if current is None:
            return protocol()
        return TlsAcceptor(current, protocol(), handshake_timeout())

    return factory
