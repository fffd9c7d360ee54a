"""The one place where the sidecar's own answers are made.

Owns the mapping cause -> status, RFC 9209 `Proxy-Status` error token and body, per the table in
the user contract ("Local replies"). Every local reply in the sidecar comes from `local_reply(...)`; no other
module invents a status code or a Proxy-Status value. Must not do I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proxy.errors import FailureKind
from proxy.message import Headers, ResponseHead, reason_phrase

PROXY_NAME = b"sidecar"


class Cause(enum.Enum):
    """Why the sidecar answered itself: (status, Proxy-Status error, default details)."""

    NO_ROUTE = (404, "destination_not_found", "no route matched")
    RATE_LIMITED = (429, "http_request_denied", "rate limited")
    AUTHZ_DENIED = (403, "http_request_denied", "peer identity not allowed")
    API_KEY = (401, "http_request_denied", "api key")
    CLUSTER_LIMIT = (503, "connection_limit_reached", "cluster limits full")
    PENDING_TIMEOUT = (503, "connection_limit_reached", "pending timeout")
    LISTENER_LIMIT = (503, "connection_limit_reached", "listener limit")
    UNAVAILABLE = (503, "destination_unavailable", "no healthy endpoint")
    FAULT_ABORT = (503, "proxy_internal_response", "fault injected")
    CONNECT_REFUSED = (503, "connection_refused", "connect refused")
    CONNECT_TIMEOUT = (503, "connection_timeout", "connect timeout")
    UNROUTABLE = (503, "destination_ip_unroutable", "destination unroutable")
    UPSTREAM_RESET = (502, "http_response_incomplete", "upstream reset")
    UPSTREAM_PROTOCOL = (502, "http_protocol_error", "upstream protocol error")
    UPSTREAM_HEAD_TOO_LARGE = (502, "http_response_header_section_size", "upstream response head too large")
    TIMEOUT = (504, "http_response_timeout", "timeout")
    BAD_REQUEST = (400, "http_request_error", "malformed request")
    HEAD_TOO_LARGE = (431, "http_request_error", "request head too large")
    BODY_TOO_LARGE = (413, "http_request_error", "request body too large")
    HEAD_TIMEOUT = (408, "http_request_error", "request head not received in time")
    METHOD_NOT_ALLOWED = (405, "http_request_error", "CONNECT is not supported")
    HTTP2_PREFACE = (505, "http_protocol_error", "HTTP/2 is not supported on this listener")
    INTERNAL = (500, "proxy_internal_error", "internal error in the sidecar")
    HTTP_VERSION = (505, "http_protocol_error", "only HTTP/1.0 and HTTP/1.1 are supported on this listener")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def error(self) -> str:
        return self.value[1]


# Request-side protocol errors: the client's byte stream can no longer be trusted, so the connection
# closes after the reply. An upstream's bad response says nothing about the client's connection.
_CLOSING = frozenset((Cause.BAD_REQUEST, Cause.HEAD_TOO_LARGE, Cause.BODY_TOO_LARGE, Cause.HEAD_TIMEOUT,
                      Cause.METHOD_NOT_ALLOWED, Cause.HTTP2_PREFACE, Cause.HTTP_VERSION))

FAILURE_CAUSES: dict[FailureKind, Cause] = {
    FailureKind.CONNECT_REFUSED: Cause.CONNECT_REFUSED,
    FailureKind.CONNECT_TIMEOUT: Cause.CONNECT_TIMEOUT,
    FailureKind.UNROUTABLE: Cause.UNROUTABLE,
    FailureKind.RESET: Cause.UPSTREAM_RESET,
    FailureKind.TIMEOUT: Cause.TIMEOUT,
    FailureKind.PROTOCOL: Cause.UPSTREAM_PROTOCOL,
    FailureKind.HEADERS_TOO_LARGE: Cause.UPSTREAM_HEAD_TOO_LARGE,
}

@dataclass(frozen=True, slots=True)
class LocalReply:
    """A complete answer the sidecar makes itself; `close` asks the codec to close after it."""

    cause: Cause
    head: ResponseHead
    body: bytes
    close: bool


def _quote(details: str) -> str:
    return details.replace("\\", "\\\\").replace('"', '\\"')


def local_reply(
    cause: Cause,
    details: str | None = None,
    *,
    status: int | None = None,
    retry_after: int | None = None,
    close: bool | None = None,
    challenge: bytes | None = None,
) -> LocalReply:
    """Build the reply for `cause`; `status` overrides (fault aborts), `retry_after` adds the header, and
    `challenge` a `WWW-Authenticate` (RFC 9110: a 401 carries one)."""
    code = status if status is not None else cause.status
    text = details if details is not None else cause.value[2]
    proxy_status = b'%s; error=%s; details="%s"' % (
        PROXY_NAME, cause.error.encode(), _quote(text).encode("utf-8", "replace"))
    body = b"%d %s: %s\n" % (code, cause.error.encode(), text.encode("utf-8", "replace"))
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"proxy-status", proxy_status),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if challenge is not None:
        headers.append((b"www-authenticate", challenge))
    # Protocol-level errors close the connection: the stream position can no longer be trusted.
    must_close = close if close is not None else cause in _CLOSING
    if must_close:
        headers.append((b"connection", b"close"))
    head = ResponseHead(code, reason_phrase(code) or b"Error", headers)
    return LocalReply(cause, head, body, must_close)


def failure_reply(kind: FailureKind, context: str) -> LocalReply:
    """The reply for an attempt that produced no response (after any retries)."""
    return local_reply(FAILURE_CAUSES[kind], context)
