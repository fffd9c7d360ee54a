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
    """Why the sidecar answered itself: (status, Proxy-Status error, default details, the grpc-status a gRPC
    caller gets instead: 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED, 7 PERMISSION_DENIED, 16 UNAUTHENTICATED,
    8 RESOURCE_EXHAUSTED, 12 UNIMPLEMENTED, 13 INTERNAL)."""

    NO_ROUTE = (404, "destination_not_found", "no route matched", 12)
    RATE_LIMITED = (429, "http_request_denied", "rate limited", 8)
    AUTHZ_DENIED = (403, "http_request_denied", "peer identity not allowed", 7)
    API_KEY = (401, "http_request_denied", "api key", 16)
    CLUSTER_LIMIT = (503, "connection_limit_reached", "cluster limits full", 14)
    PENDING_TIMEOUT = (503, "connection_limit_reached", "pending timeout", 14)
    LISTENER_LIMIT = (503, "connection_limit_reached", "listener limit", 14)
    UNAVAILABLE = (503, "destination_unavailable", "no healthy endpoint", 14)
    FAULT_ABORT = (503, "proxy_internal_response", "fault injected", 14)
    CONNECT_REFUSED = (503, "connection_refused", "connect refused", 14)
    CONNECT_TIMEOUT = (503, "connection_timeout", "connect timeout", 14)
    UNROUTABLE = (503, "destination_ip_unroutable", "destination unroutable", 14)
    UPSTREAM_RESET = (502, "http_response_incomplete", "upstream reset", 14)
    UPSTREAM_PROTOCOL = (502, "http_protocol_error", "upstream protocol error", 13)
    UPSTREAM_HEAD_TOO_LARGE = (502, "http_response_header_section_size", "upstream response head too large", 13)
    TIMEOUT = (504, "http_response_timeout", "timeout", 4)
    BAD_REQUEST = (400, "http_request_error", "malformed request", 13)
    HEAD_TOO_LARGE = (431, "http_request_error", "request head too large", 8)
    BODY_TOO_LARGE = (413, "http_request_error", "request body too large", 8)
    HEAD_TIMEOUT = (408, "http_request_error", "request head not received in time", 4)
    METHOD_NOT_ALLOWED = (405, "http_request_error", "CONNECT is not supported", 12)
    HTTP2_PREFACE = (505, "http_protocol_error", "HTTP/2 is not supported on this listener", 13)
    INTERNAL = (500, "proxy_internal_error", "internal error in the sidecar", 13)
    HTTP_VERSION = (505, "http_protocol_error", "only HTTP/1.0 and HTTP/1.1 are supported on this listener", 13)

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def error(self) -> str:
        return self.value[1]

    @property
    def grpc_status(self) -> int:
        return self.value[3]


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


def grpc_shaped(reply: LocalReply) -> LocalReply:
    """The same answer for a gRPC caller: HTTP 200 with no body, its grpc-status and a grpc-message naming
    the cause in the head (gRPC's trailers-only form), Proxy-Status kept."""
    message = reply.body.rstrip(b"\n").decode("utf-8", "replace")
    headers: Headers = [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(reply.cause.grpc_status).encode()),
        (b"grpc-message", _percent_encode(message)),
        (b"content-length", b"0"),
    ]
    headers.extend((name, value) for name, value in reply.head.headers
                   if name in (b"proxy-status", b"retry-after", b"www-authenticate", b"connection"))
    return LocalReply(reply.cause, ResponseHead(200, b"OK", headers), b"", reply.close)


def _percent_encode(text: str) -> bytes:
    # grpc-message is percent-encoded UTF-8 (the gRPC HTTP/2 spec): printable ASCII passes, '%' and every
    # other byte are encoded.
    return b"".join(bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
                    for byte in text.encode("utf-8"))


def failure_reply(kind: FailureKind, context: str) -> LocalReply:
    """The reply for an attempt that produced no response (after any retries)."""
    return local_reply(FAILURE_CAUSES[kind], context)
