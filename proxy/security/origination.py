"""mTLS origination: how a cluster with `tls:` opens its upstream connections, and whom it accepts.

Owns `ClusterOrigin` (one per cluster with `tls:`; the pool's `OriginTls`) and `EndpointOrigin` (one per
endpoint; the pool's `EndpointTls`): the client context in force (from the cluster's `ClientTls` holder,
which reloads rotated cert/key/CA files and keeps `sidecar_cert_expiry_timestamp_seconds{listener_or_cluster=
<cluster>}`), the SNI name, the identity check after the handshake, and TLS session resumption per endpoint.

Identity: the upstream's chain is verified against the cluster's `ca` during the handshake (the context
requires it); then, when `expect_identity` is set, the SPIFFE ID of its certificate (URI SAN) must be
exactly that ID. Its DNS names and hostname are not looked at: a workload is known by its SPIFFE ID.

SNI: `server_name` when set; otherwise the endpoint's host, which Python's ssl sends only when it is a DNS
name (an IP literal is never sent as SNI, RFC 6066), so endpoints given as IPs, as discovery yields them,
send none.

Resumption: asyncio's `create_connection` (uvloop's too) has no parameter for a TLS session, but both make
the connection's `SSLObject` with `context.wrap_bio(...)`, called as a Python attribute of the context, in
the context (contextvars) of the task that connects. So each client context in force gets a `wrap_bio` of
its own on the instance, which offers the session of the endpoint that `EndpointOrigin.handshake()` marks
in a context variable for the duration of the connect. The session an endpoint offers is taken from its
last fully handshaken connection when the next one starts (TLS 1.3 tickets arrive after the handshake), and
is offered until it fails to resume or expires (one ticket serves many connections: fine between
sidecars, which do not use 0-RTT; the privacy advice against it is about tracking browsers), and only with
the context that made it: a rotated context starts with a full handshake. A resumed session carries the
upstream's certificate, verified when the session was made, so the identity check reads it the same way.

Must not: do socket I/O (the pool connects), load files (the `ClientTls` holder does), or run per request:
everything here runs per new connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final

from proxy.security.tls import ClientTls, peer_identity

if TYPE_CHECKING:
    from proxy.config.model import ClusterTlsConfig
    from proxy.telemetry.metrics import Metrics

__all__ = ["ALPN", "ClusterOrigin", "EndpointOrigin"]

# What a cluster's connections offer in ALPN. HTTP/1.1 only until the HTTP/2 codec exists (then `h2` too,
# for `protocol: auto` and `http2`).
ALPN: Final = ("http/1.1",)

# The endpoint whose connection is being opened by the current task: read by the context's `wrap_bio`.
_DIALING: ContextVar[EndpointOrigin | None] = ContextVar("proxy.security.origination.dialing", default=None)

_WrapBio = Callable[..., ssl.SSLObject]


class ClusterOrigin:
    """The TLS of one cluster's upstream connections."""

    __slots__ = ("_hooked", "expect_identity", "material", "name", "server_name")

    def __init__(self, name: str, material: ClientTls, expect_identity: str | None = None,
                 server_name: str | None = None) -> None:
        self.name = name
        self.material = material
        self.expect_identity = expect_identity
        self.server_name = server_name
        # The client context whose `wrap_bio` offers sessions (the one in force when last asked).
        self._hooked: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, name: str, config: ClusterTlsConfig, metrics: Metrics | None = None,
                    alpn: Sequence[str] = ALPN) -> ClusterOrigin:
        """Load the cluster's files (raises `TlsError` naming them when they cannot make a context)."""
        material = ClientTls(name, config.cert, config.key, config.ca, alpn, metrics)
        return cls(name, material, config.expect_identity, config.server_name)

    def for_endpoint(self, host: str, port: int) -> EndpointOrigin:
        # An IP literal is never sent as SNI (RFC 6066); "" says so up front (and spares its IDNA encoding).
        return EndpointOrigin(self, self.server_name or ("" if _is_ip(host) else host))

    def context(self) -> ssl.SSLContext:
        """The client context for a new connection: the one in force (rotation applies from here on)."""
        context = self.material.context
        if context is not self._hooked:
            _offer_sessions(context)
            self._hooked = context
        return context

    def check(self, ssl_object: ssl.SSLObject) -> str | None:
        """None when the verified upstream is the one expected, else why it is refused."""
        expected = self.expect_identity
        if expected is None:
            return None  # any workload whose certificate chains to `ca`
        identity = peer_identity(ssl_object)
        if not identity:
            return f"upstream certificate has no SPIFFE ID; expected {expected}"
        if identity != expected:
            return f"upstream identity {identity} is not the expected {expected}"
        return None

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows of this cluster's TLS."""
        return {
            "identity": self.material.identity,
            "expect_identity": self.expect_identity,
            "server_name": self.server_name,
            "cert_not_after": self.material.not_after,
        }


class EndpointOrigin:
    """The TLS of one endpoint's connections: its SNI name and the session its next handshake offers."""

    __slots__ = ("_last", "_session", "_session_context", "cluster", "full_handshakes", "resumed_handshakes",
                 "server_name")

    def __init__(self, cluster: ClusterOrigin, server_name: str) -> None:
        self.cluster = cluster
        self.server_name = server_name
        # The newest admitted connection (its session may not have its TLS 1.3 ticket yet) ...
        self._last: ssl.SSLObject | None = None
        # ... and the session new handshakes offer, with the context that made it.
        self._session: ssl.SSLSession | None = None
        self._session_context: ssl.SSLContext | None = None
        self.full_handshakes = 0
        self.resumed_handshakes = 0

    @contextlib.contextmanager
    def handshake(self) -> Iterator[ssl.SSLContext]:
        """Enter around `create_connection`: yields the context to connect with; a handshake in here offers
        this endpoint's session."""
        context = self.cluster.context()
        token = _DIALING.set(self)
        try:
            yield context
        finally:
            _DIALING.reset(token)

    def admit(self, ssl_object: ssl.SSLObject) -> str | None:
        """After a handshake: None when the upstream is accepted (its session may serve the next one)."""
        refusal = self.cluster.check(ssl_object)
        if refusal is not None:
            return refusal
        if ssl_object.session_reused:
            self.resumed_handshakes += 1
        else:
            # A full handshake: nothing was offered, or the upstream declined it (its ticket key changed, the
            # session expired there): the next connection takes this one's session instead.
            self.full_handshakes += 1
            self._session = self._session_context = None
        self._last = ssl_object
        return None

    def session_for(self, context: ssl.SSLContext) -> ssl.SSLSession | None:
        """The session a new handshake with `context` may offer, or None (then it is a full handshake).

        One session serves until it fails to resume or expires: reading a connection's session costs about
        200 us (CPython copies it), more than half of what resuming saves."""
        session = self._session
        if session is not None and (self._session_context is not context
                                    or session.time + session.timeout <= time.time()):
            session = self._session = self._session_context = None  # rotated away, or expired
        if session is None:
            last = self._last
            if last is None or last.context is not context:
                return None
            fresh = last.session
            # A TLS 1.3 session resumes only with a ticket (sent after the handshake); TLS 1.2 by its id too.
            if fresh is None or not (fresh.has_ticket or (fresh.id and last.version() == "TLSv1.2")):
                return None
            session = self._session = fresh
            self._session_context = context
            self._last = None
        return session

    def snapshot(self) -> dict[str, object]:
        return {"full_handshakes": self.full_handshakes, "resumed_handshakes": self.resumed_handshakes}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _offer_sessions(context: ssl.SSLContext) -> None:
    """Give `context` a `wrap_bio` that offers the connecting endpoint's session (see the module docstring).
    Anything else that wraps with it (no endpoint marked, a server side, a session already given) gets
    exactly what it asked for."""
    plain: _WrapBio = context.wrap_bio

    def wrap_bio(incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        dialing = _DIALING.get()
        if dialing is not None and session is None and not server_side:
            session = dialing.session_for(context)
        return plain(incoming, outgoing, server_side=server_side, server_hostname=server_hostname,
                     session=session)

    # An instance attribute shadows the class's method for the Python-level lookup the event loops make.
    setattr(context, "wrap_bio", wrap_bio)  # noqa: B010 (mypy refuses assigning to a method)
