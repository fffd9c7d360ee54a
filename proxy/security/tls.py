"""TLS for listeners and clusters: SSL contexts, the peer's SPIFFE ID, and hot reload of cert/key/CA files.

Owns:
- `server_context` and `client_context`: the one TLS policy of the sidecar, both ways: TLS 1.2 and 1.3 only,
  ECDHE with AES-GCM or ChaCha20-Poly1305 for TLS 1.2 (TLS 1.3's suites are all AEAD), no compression, no
  renegotiation. A client checks the server's chain against `ca` but not its hostname: a workload is known
  by its SPIFFE ID (URI SAN), which the caller compares (`peer_identity`), not by a DNS name;
- `peer_identity` (the SPIFFE ID of the peer's verified certificate) and `peer_cert_sha256`;
- `ServerTls` and `ClientTls`: the files of one listener or cluster, the context in force, and its
  replacement when the files change on disk (`TlsMaterial.watch`: a poll, like the config watch, that
  sees edits in place, replacement by rename and Kubernetes' `..data` symlink swap alike). New material
  is loaded into a scratch context first; a half-written file or a cert that does not match its key is
  refused, the old context kept, and `sidecar_tls_reloads_total{result="failure"}` counted.
  `sidecar_cert_expiry_timestamp_seconds{listener_or_cluster}` follows the certificate in use.
- `handshake_error_reason`: a failed handshake's exception -> one of the fixed `HANDSHAKE_ERROR_REASONS`.

How a server takes new material without a restart: the context a listener hands to every handshake
(`ServerTls.context`) never changes; its `sni_callback`, which OpenSSL runs on every ClientHello (with or
without SNI), points the new connection's SSL object at the current context (`SSL_set_SSL_CTX`: its
certificate, key and CA store), so a rotation applies to the next handshake, and connections already
open keep the session they have. A client simply reads `ClientTls.context` for each new connection.

Must not: do socket I/O (the listener's acceptor and the cluster's connector do), decide authorization
(the route's authz does), or be on the per-request path: everything here runs per handshake or per poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from cryptography import x509

from proxy.security.certs import spiffe_id_from_cert

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

    from proxy.telemetry.metrics import Metrics

__all__ = [
    "CIPHERS",
    "HANDSHAKE_ERROR_REASONS",
    "ClientTls",
    "ServerTls",
    "TlsError",
    "TlsMaterial",
    "client_context",
    "handshake_error_reason",
    "peer_cert_sha256",
    "peer_identity",
    "server_context",
]

log = logging.getLogger("proxy.security.tls")

# TLS 1.2 suites: forward secrecy (ECDHE) and an AEAD cipher only. TLS 1.3's suites are OpenSSL's defaults,
# which are all AEAD. `!PSK` drops ECDHE-PSK-CHACHA20-POLY1305, which certificates never negotiate.
CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!PSK"
# How often the files are looked at (one stat per file per poll). Certificate rotation is not urgent to the
# second: a new certificate is issued well before the old one expires.
POLL_SECONDS: Final = 1.0

# The reasons `sidecar_tls_handshake_errors_total{listener,reason}` counts (a fixed set: bounded labels).
NO_CLIENT_CERT: Final = "no_client_cert"  # an mTLS listener's client sent no certificate
UNKNOWN_CA: Final = "unknown_ca"  # the client's certificate does not chain to the listener's `ca`
EXPIRED: Final = "expired"  # the client's certificate has expired (or is not valid yet)
BAD_CERTIFICATE: Final = "bad_certificate"  # any other failure verifying the client's certificate
PROTOCOL_VERSION: Final = "protocol_version"  # the client offers only TLS 1.1 or older
NO_SHARED_CIPHER: Final = "no_shared_cipher"  # no cipher suite (or group) in common
NOT_TLS: Final = "not_tls"  # the first bytes were not a TLS ClientHello (plain HTTP to a TLS port)
PEER_ALERT: Final = "peer_alert"  # the client aborted with an alert (it refused our certificate)
HANDSHAKE_TIMEOUT: Final = "handshake_timeout"  # no complete handshake within `http.header_read_timeout`
PEER_CLOSED: Final = "peer_closed"  # the client closed or reset the connection during the handshake
OTHER: Final = "other"
HANDSHAKE_ERROR_REASONS: Final = (NO_CLIENT_CERT, UNKNOWN_CA, EXPIRED, BAD_CERTIFICATE, PROTOCOL_VERSION,
                                  NO_SHARED_CIPHER, NOT_TLS, PEER_ALERT, HANDSHAKE_TIMEOUT, PEER_CLOSED, OTHER)

# X509_V_ERR_* codes of a failed chain verification (openssl/x509_vfy.h).
_VERIFY_EXPIRED: Final = frozenset((9, 10))  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
# UNABLE_TO_GET_ISSUER_CERT, DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN,
# UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE
_VERIFY_UNKNOWN_CA: Final = frozenset((2, 18, 19, 20, 21))
# OpenSSL's reason strings (`SSLError.reason`) -> our reasons.
_REASONS: Final = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": NO_CLIENT_CERT,
    "UNSUPPORTED_PROTOCOL": PROTOCOL_VERSION,
    "NO_PROTOCOLS_AVAILABLE": PROTOCOL_VERSION,
    "TLSV1_ALERT_PROTOCOL_VERSION": PROTOCOL_VERSION,
    "VERSION_TOO_LOW": PROTOCOL_VERSION,
    "NO_SHARED_CIPHER": NO_SHARED_CIPHER,
    "NO_SUITABLE_KEY_SHARE": NO_SHARED_CIPHER,
    "NO_SHARED_GROUPS": NO_SHARED_CIPHER,
    "WRONG_VERSION_NUMBER": NOT_TLS,
    "HTTP_REQUEST": NOT_TLS,
    "HTTPS_PROXY_REQUEST": NOT_TLS,
    "UNKNOWN_PROTOCOL": NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": NOT_TLS,
    "RECORD_LENGTH_MISMATCH": NOT_TLS,
    "UNEXPECTED_EOF_WHILE_READING": PEER_CLOSED,
}


class TlsError(OSError):
    """Cert, key or CA files that cannot make a context; `str()` names the files and what is wrong.

    An OSError, as a socket that cannot be bound is: whoever starts listeners and clusters reports either
    as "cannot start: ..." in one line."""


def _policy(protocol: int) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(cert: str, key: str, ca: str | None, require_client_cert: bool) -> ssl.SSLContext:
    """A listener's context: serves `cert` (with `key`); verifies client certificates against `ca` (required
    with `require_client_cert`, else checked when a client offers one). Raises `ssl.SSLError` or `OSError`
    for files that cannot be loaded, or a cert that does not match its key."""
    context = _policy(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # No TLS 1.3 session tickets: each costs about 0.14 ms of CPU per handshake (two by default, a quarter of
    # the server's handshake), and a resumed session would skip checking the client's certificate against a
    # CA rotated since. So a calling sidecar's session resumption (security/origination.py) applies to
    # upstreams that issue tickets, not to another sidecar's listener: between sidecars, keep-alive pooling
    # is what saves handshakes (benchmarks/mtls.py measured both hops).
    context.num_tickets = 0
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("require_client_cert needs a ca to verify client certificates against")
    # Every listener serves HTTP/2 too (proxy.http.h2_server): a client that offers h2 gets it; the HTTP/1
    # codec recognises its preface and hands the connection over.
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def client_context(cert: str | None, key: str | None, ca: str, alpn: Sequence[str]) -> ssl.SSLContext:
    """A cluster's context: verifies the server's chain against `ca` (required), presents `cert` (with
    `key`) when given, offers `alpn`. No hostname check: the caller compares the server's SPIFFE ID
    (`peer_identity`) with the identity it expects."""
    context = _policy(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The SPIFFE ID (first `spiffe://` URI SAN) of the peer's verified certificate; "" when the peer sent
    none, it was not verified, or it has no SPIFFE ID."""
    if ssl_object is None:
        return ""
    # The dict form is empty unless the chain was verified: an unverified certificate names nobody.
    cert = ssl_object.getpeercert()
    if not cert:
        return ""
    return spiffe_id_from_cert(cert) or ""


def peer_cert_sha256(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The SHA-256 of the peer certificate's DER bytes, lower-case hex ("" without a certificate)."""
    if ssl_object is None:
        return ""
    der = ssl_object.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest() if der else ""


def handshake_error_reason(error: BaseException | None) -> str:
    """Which of `HANDSHAKE_ERROR_REASONS` a failed server-side handshake was."""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code in _VERIFY_EXPIRED:
            return EXPIRED
        if code in _VERIFY_UNKNOWN_CA:
            return UNKNOWN_CA
        return BAD_CERTIFICATE
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        found = _REASONS.get(reason)
        if found is not None:
            return found
        if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
            return PEER_ALERT
        if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return PEER_CLOSED
        return OTHER
    if isinstance(error, TimeoutError | asyncio.TimeoutError) or (
            isinstance(error, ConnectionAbortedError) and "handshake" in str(error)):
        return HANDSHAKE_TIMEOUT  # uvloop and asyncio abort a slow handshake with ConnectionAbortedError
    if error is None or isinstance(error, ConnectionError | EOFError):
        return PEER_CLOSED
    return OTHER


# --- material on disk, and its hot reload ------------------------------------------------------------------


_Fingerprint = tuple[tuple[int, int, int, int] | None, ...]


def _fingerprint(paths: Sequence[str]) -> _Fingerprint:
    """(device, inode, mtime, size) of each file, following symlinks: a rename over the file or a swap of a
    `..data` symlink shows as a new inode, an edit in place as a new mtime or size. None: missing now."""
    found: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(None)
        else:
            found.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What one successful load made: the context, and facts about the certificate it serves."""

    context: ssl.SSLContext
    digest: str  # of the files' bytes: a rewrite with the same content is not a reload
    identity: str  # our own SPIFFE ID ("" without a certificate, or without a SPIFFE ID)
    not_after: float | None  # Unix time; None without a certificate


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


class TlsMaterial:
    """The cert, key and CA files of one listener or cluster (`name`), and the context made from them.

    `reload()` loads the files into a new context and swaps it in when that works; `watch()` calls it when
    the files change. Subclasses say how a context is made (`_build`)."""

    def __init__(self, name: str, cert: str | None, key: str | None, ca: str | None,
                 metrics: Metrics | None = None) -> None:
        self.name = name
        self.cert = cert
        self.key = key
        self.ca = ca
        self.paths: tuple[str, ...] = tuple(p for p in (cert, key, ca) if p is not None)
        self._reloaded: Counter | None = None
        self._refused: Counter | None = None
        self._expiry: Gauge | None = None
        if metrics is not None:
            self._reloaded = metrics.tls_reloads("success")
            self._refused = metrics.tls_reloads("failure")
            self._expiry = metrics.cert_expiry_of(name)
        self._stat = _fingerprint(self.paths)
        loaded = self._load()  # the first load raises: a listener or cluster cannot start without it
        self._loaded = loaded
        self._installed(loaded)

    # -- what subclasses provide -----------------------------------------------------------------

    def _build(self) -> ssl.SSLContext:
        raise NotImplementedError

    def _installed(self, loaded: _Loaded) -> None:
        """A new context is in force (the first one too)."""
        if self._expiry is not None and loaded.not_after is not None:
            self._expiry.set(loaded.not_after)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """Our own SPIFFE ID, from the certificate in force ("" when none)."""
        return self._loaded.identity

    @property
    def not_after(self) -> float | None:
        """When the certificate in force expires (Unix time), None without one."""
        return self._loaded.not_after

    def _describe(self) -> str:
        return ", ".join(f"{what} {path}" for what, path in (("cert", self.cert), ("key", self.key),
                                                                ("ca", self.ca)) if path is not None)

    def _load(self) -> _Loaded:
        """Read the files and make a context from them; raises TlsError saying what is wrong."""
        try:
            digest = hashlib.sha256()
            for path in self.paths:
                digest.update(_read(path))
                digest.update(b"\0")
            context = self._build()
            identity, not_after = "", None
            if self.cert is not None:
                # The leaf is the first certificate of the chain file.
                leaf = x509.load_pem_x509_certificate(_read(self.cert))
                identity = spiffe_id_from_cert(leaf) or ""
                not_after = leaf.not_valid_after_utc.timestamp()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise TlsError(f"{self.name}: cannot load TLS material ({self._describe()}): {_say(exc)}") from None
        if not_after is not None and not_after <= time.time():
            log.warning("tls %s: the certificate %s expired at %s; peers will refuse it", self.name, self.cert,
                        time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(not_after)))
        return _Loaded(context, digest.hexdigest(), identity, not_after)

    # -- reloading -------------------------------------------------------------------------------

    def changed(self) -> bool:
        """Whether any file looks different on disk since the last look (one stat per file)."""
        stat = _fingerprint(self.paths)
        if stat == self._stat:
            return False
        self._stat = stat
        # A file missing for a moment (mid-rename, or the symlink swap's gap): wait until it is back.
        return None not in stat

    def reload(self) -> bool:
        """Load the files again now; True when a new context is in force (False: unchanged, or refused)."""
        try:
            loaded = self._load()
        except TlsError as error:
            self._refuse(error)
            return False
        return self._swap(loaded)

    async def reload_async(self) -> bool:
        """`reload`, with the files read and the context made in a worker thread (off the event loop)."""
        try:
            loaded = await asyncio.to_thread(self._load)
        except TlsError as error:
            self._refuse(error)
            return False
        return self._swap(loaded)

    def _refuse(self, error: TlsError) -> None:
        log.error("tls reload refused: %s; the certificate in force stays", error)
        if self._refused is not None:
            self._refused.inc()

    def _swap(self, loaded: _Loaded) -> bool:
        if loaded.digest == self._loaded.digest:
            return False  # rewritten with the same bytes (or touched): nothing to do, nothing to count
        self._loaded = loaded
        self._installed(loaded)
        if self._reloaded is not None:
            self._reloaded.inc()
        log.info("tls %s: new certificate material in force (%s)", self.name, self._describe())
        return True

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Poll the files every `interval` seconds and reload when they change (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                await self.reload_async()


class ServerTls(TlsMaterial):
    """A listener's TLS: `context` is what every handshake starts with; it switches each new connection to
    the context made from the files in force (see the module docstring)."""

    def __init__(self, name: str, cert: str, key: str, ca: str | None, require_client_cert: bool,
                 metrics: Metrics | None = None) -> None:
        self.require_client_cert = require_client_cert
        self._front: ssl.SSLContext | None = None
        super().__init__(name, cert, key, ca, metrics)

    @property
    def context(self) -> ssl.SSLContext:
        """The context every handshake of this listener starts with (the first one made; it never changes)."""
        assert self._front is not None
        return self._front

    @property
    def current(self) -> ssl.SSLContext:
        """The context made from the files in force (new handshakes use its certificate, key and CA)."""
        return self._loaded.context

    def _build(self) -> ssl.SSLContext:
        assert self.cert is not None and self.key is not None
        return server_context(self.cert, self.key, self.ca, self.require_client_cert)

    def _installed(self, loaded: _Loaded) -> None:
        super()._installed(loaded)
        if self._front is None:
            # The first context is the front one: no switch is needed until a reload replaces it.
            self._front = loaded.context
            loaded.context.sni_callback = self._switch

    def _switch(self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        """OpenSSL's ClientHello callback: this handshake uses the context in force."""
        current = self._loaded.context
        if context is not current:
            ssl_object.context = current


class ClientTls(TlsMaterial):
    """A cluster's TLS: each new upstream connection reads `context` (the one made from the files in force);
    connections already open keep theirs."""

    def __init__(self, name: str, cert: str | None, key: str | None, ca: str, alpn: Sequence[str] = (),
                 metrics: Metrics | None = None) -> None:
        self.alpn = tuple(alpn)
        super().__init__(name, cert, key, ca, metrics)

    @property
    def context(self) -> ssl.SSLContext:
        return self._loaded.context

    def _build(self) -> ssl.SSLContext:
        assert self.ca is not None
        return client_context(self.cert, self.key, self.ca, self.alpn)


def _say(error: BaseException) -> str:
    """An SSL or OS error in a few words (OpenSSL's own are `[PEM: NO_START_LINE] no start line (_ssl.c:…)`)."""
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        if reason == "KEY_VALUES_MISMATCH":
            return "the certificate does not match the private key"
        return f"{error.library or 'ssl'}: {reason.lower().replace('_', ' ') or error}"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename or ''}: {error.strerror}".lstrip(": ")
    return str(error)
