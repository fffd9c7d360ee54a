"""gRPC's view of a request and an answer: what is gRPC, what its status means, its deadline, its replies.

Owns the pure facts the policy stages need to treat gRPC as gRPC when it rides on HTTP/2:
- `is_grpc(content_type)` (defined in `proxy.message`, where the codecs read it): a request whose
  `content-type` is `application/grpc` or `application/grpc+...`;
- `GrpcStatus` (the 17 codes) and `grpc_status_of(value)`: a `grpc-status` trailer (or header of a
  trailers-only answer) parsed, None when absent or malformed;
- which codes are failures for breakers and outlier detection (the ones Envoy maps to 5xx: UNKNOWN,
  DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (429 there, a failure of the server's capacity), INTERNAL,
  UNAVAILABLE, DATA_LOSS, UNIMPLEMENTED is not: a caller's mistake), and the retry condition names Envoy
  and Istio use (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`);
- `parse_grpc_timeout` / `format_grpc_timeout`: the `grpc-timeout` header (1 to 8 digits and a unit,
  H M S m u n), which caps the route deadline; the time left goes upstream in the same header;
- `grpc_status_for(cause)`: the status a local reply to a gRPC caller carries, by its cause.
Must not do I/O or read framing: callers hand it header values.
"""

from __future__ import annotations

import enum
from typing import Final

from proxy.local_reply import Cause
from proxy.message import is_grpc

__all__ = ["FAILURE_STATUSES", "RETRY_CONDITION_STATUS", "GrpcStatus", "format_grpc_timeout", "grpc_status_for",
           "grpc_status_of", "is_grpc", "parse_grpc_timeout"]


class GrpcStatus(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# Failures for the breaker and outlier detection: the server (or what is behind it) could not serve.
FAILURE_STATUSES: Final = frozenset({GrpcStatus.UNKNOWN, GrpcStatus.DEADLINE_EXCEEDED, GrpcStatus.RESOURCE_EXHAUSTED,
                                     GrpcStatus.INTERNAL, GrpcStatus.UNAVAILABLE, GrpcStatus.DATA_LOSS})

# Envoy's `retry_on` gRPC names (Istio's too) and the status each one retries.
RETRY_CONDITION_STATUS: Final[dict[str, GrpcStatus]] = {
    "cancelled": GrpcStatus.CANCELLED,
    "deadline-exceeded": GrpcStatus.DEADLINE_EXCEEDED,
    "internal": GrpcStatus.INTERNAL,
    "resource-exhausted": GrpcStatus.RESOURCE_EXHAUSTED,
    "unavailable": GrpcStatus.UNAVAILABLE,
}

_UNITS: Final[dict[int, float]] = {
    ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9,
}
_MAX_DIGITS: Final = 8


# Every status by its code (an index: calling the enum class costs a Python-level lookup per call).
_STATUSES: tuple[GrpcStatus, ...] = tuple(sorted(GrpcStatus))


def grpc_status_of(value: bytes | None) -> GrpcStatus | None:
    """A `grpc-status` value parsed; None when absent, not a number, or not one of the 17 codes."""
    if value is None or not value.isdigit() or len(value) > 2:
        return None
    code = int(value)
    return _STATUSES[code] if code < len(_STATUSES) else None


def parse_grpc_timeout(value: bytes | None) -> float | None:
    """Seconds from a `grpc-timeout` value (`100m`, `5S`, `1H`); None when absent or malformed."""
    if value is None or not 2 <= len(value) <= _MAX_DIGITS + 1:
        return None
    digits, unit = value[:-1], value[-1]
    scale = _UNITS.get(unit)
    if scale is None or not digits.isdigit():
        return None
    return int(digits) * scale


def format_grpc_timeout(seconds: float) -> bytes:
    """`seconds` as a `grpc-timeout` value, in the finest unit whose count fits in 8 digits. A deadline
    already due goes out as `1m` (one millisecond: the upstream fails it at once rather than never)."""
    if seconds <= 0.0:
        return b"1m"
    for unit, scale in ((b"n", 1e-9), (b"u", 1e-6), (b"m", 1e-3), (b"S", 1.0), (b"M", 60.0), (b"H", 3600.0)):
        count = int(seconds / scale)
        if count < 10**_MAX_DIGITS:
            return str(max(count, 1)).encode() + unit
    return b"99999999H"


def grpc_status_for(cause: Cause) -> GrpcStatus:
    """The status of a local reply to a gRPC caller (the cause's own: `Cause.grpc_status`): UNAVAILABLE for
    the unavailable causes, DEADLINE_EXCEEDED for timeouts, PERMISSION_DENIED for an authorization refusal,
    UNAUTHENTICATED for a missing or wrong API key, RESOURCE_EXHAUSTED when rate limited, UNIMPLEMENTED for
    no route, INTERNAL for the sidecar's own or a protocol failure."""
    return GrpcStatus(cause.grpc_status)
