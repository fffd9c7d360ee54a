"""The error taxonomy of an upstream attempt.

Owns `UpstreamError` and its kinds, each naming the RFC 9209 Proxy-Status error a client sees, and
the layered context string ("cluster c: endpoint e: connect refused"). Expected outcomes such as
"no route" are values (see local_reply), not exceptions; only I/O failures are raised.
"""

from __future__ import annotations

import enum


class FailureKind(enum.Enum):
    """Why an upstream attempt produced no (complete) response."""

    CONNECT_REFUSED = "connection_refused"
    CONNECT_TIMEOUT = "connection_timeout"
    UNROUTABLE = "destination_ip_unroutable"
    RESET = "http_response_incomplete"
    TIMEOUT = "http_response_timeout"
    PROTOCOL = "http_protocol_error"
    # The response head or its trailers went past the cluster's max_response_headers / _count.
    HEADERS_TOO_LARGE = "http_response_header_section_size"

    @property
    def before_connect(self) -> bool:
        """True when the request never reached the upstream (safe to retry any method)."""
        return self in (FailureKind.CONNECT_REFUSED, FailureKind.CONNECT_TIMEOUT, FailureKind.UNROUTABLE)


class UpstreamError(Exception):
    """An attempt failed at the transport or framing level; `context` names the layers crossed."""

    def __init__(self, kind: FailureKind, context: str, *, response_started: bool = False,
                 stale: bool = False) -> None:
        super().__init__(context)
        self.kind = kind
        self.context = context
        self.response_started = response_started
        # A reused pooled connection the upstream had already closed (no byte of response came back).
        self.stale = stale
