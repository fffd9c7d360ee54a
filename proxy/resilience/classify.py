"""The one classifier: what an attempt's result means to retry, breaker, outlier detection and metrics.

Owns `Outcome` (the `outcome` label of `sidecar_upstream_attempts_total`), `Verdict` (outcome, whether it
is a failure for the breaker and outlier detection, and the retry conditions it satisfies as a bitmask)
and the three entry points `classify_status`, `classify_failure` and `classify_cancelled`. Every verdict
is built once at import and shared, so classifying costs a table index or a few identity tests and
allocates nothing.
Must not decide policy (whether to retry is `retry.py`'s, with the route's condition mask), do I/O, or
know about HTTP framing; it sees only a status code or a `FailureKind`.

Condition bits: the five named conditions of `RETRY_CONDITIONS` take bits 0..4, and every status code
s in 100..599 has its own bit `1 << (STATUS_BIT_BASE + s - 100)`, so a route's `on:` list (names and
codes mixed) compiles into one int and a retry decision is a single `&`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

from proxy.config.model import GRPC_RETRY_CONDITIONS, RETRY_CONDITIONS
from proxy.errors import FailureKind
from proxy.resilience.grpc import FAILURE_STATUSES, RETRY_CONDITION_STATUS, GrpcStatus

CONNECT_FAILURE: Final = 1 << 0
RESET: Final = 1 << 1
GATEWAY_ERROR: Final = 1 << 2
SERVER_ERROR: Final = 1 << 3  # the `5xx` condition
RETRIABLE_4XX: Final = 1 << 4
STATUS_BIT_BASE: Final = 5

_NAMED_BITS: Final = {
    "connect-failure": CONNECT_FAILURE,
    "reset": RESET,
    "gateway-error": GATEWAY_ERROR,
    "5xx": SERVER_ERROR,
    "retriable-4xx": RETRIABLE_4XX,
}
# The schema's list of names and ours must not drift apart.
assert tuple(_NAMED_BITS) == RETRY_CONDITIONS

_MIN_STATUS: Final = 100
_MAX_STATUS: Final = 599
# gRPC conditions take the bits above the status codes' (`cancelled`, `unavailable`, ...).
GRPC_BIT_BASE: Final = STATUS_BIT_BASE + _MAX_STATUS - _MIN_STATUS + 1
_GRPC_BITS: Final[dict[str, int]] = {name: 1 << (GRPC_BIT_BASE + i) for i, name in enumerate(GRPC_RETRY_CONDITIONS)}
assert set(_GRPC_BITS) == set(RETRY_CONDITION_STATUS)


def status_bit(status: int) -> int:
    """The condition bit of the literal status code `status` (100..599)."""
    if not _MIN_STATUS <= status <= _MAX_STATUS:
        raise ValueError(f"status {status} is outside 100..599")
    return 1 << (STATUS_BIT_BASE + status - _MIN_STATUS)


def condition_mask(conditions: Iterable[str]) -> int:
    """Compile a retry `on:` list (condition names and status code strings) into one bitmask."""
    mask = 0
    for condition in conditions:
        named = _NAMED_BITS.get(condition) or _GRPC_BITS.get(condition)
        if named is not None:
            mask |= named
        elif condition.isdigit():
            mask |= status_bit(int(condition))
        else:
            raise ValueError(f"unknown retry condition {condition!r}")
    return mask


def condition_names(mask: int) -> frozenset[str]:
    """The names and status codes a mask holds (for logs, /config_dump and tests; not the hot path)."""
    names = {name for name, bit in (*_NAMED_BITS.items(), *_GRPC_BITS.items()) if mask & bit}
    for status in range(_MIN_STATUS, _MAX_STATUS + 1):
        if mask & status_bit(status):
            names.add(str(status))
    return frozenset(names)


class Outcome(enum.Enum):
    """An attempt's outcome; `.value` is the metric label."""

    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    RESET = "reset"
    CONNECT_FAILURE = "connect_failure"
    # Not one of the contract's five labels: the downstream went away, so the attempt has no verdict.
    # Whether to count it (and under which label) is the metrics owner's call.
    CANCELLED = "cancelled"


class Verdict:
    """What one attempt's result means; shared, immutable (treat as read-only), compared by identity in tests.

    A plain slotted class: `label` and `cancelled` are read per attempt, and as attributes of a class mypyc
    compiles they cost a field load, where a property reading `Outcome.value` ran enum's interpreted
    descriptor each time (docs/decisions/0008).
    """

    __slots__ = ("cancelled", "conditions", "is_failure", "kind", "label", "outcome", "status")

    def __init__(self, outcome: Outcome, is_failure: bool, conditions: int, status: int = 0,
                 kind: FailureKind | None = None) -> None:
        self.outcome = outcome
        # For the breaker and outlier detection: connect failure, reset, timeout or any 5xx response.
        self.is_failure = is_failure
        # Retry conditions satisfied, as bits (see the module docstring); `policy_mask & conditions` decides.
        self.conditions = conditions
        # The response status, or 0 when the attempt produced no response head.
        self.status = status
        self.kind = kind
        # The `outcome` label of sidecar_upstream_attempts_total.
        self.label: str = outcome.value
        # True for a downstream cancellation: report it to the breaker with `cancel`, not `record`.
        self.cancelled = outcome is Outcome.CANCELLED

    def __repr__(self) -> str:
        return (f"Verdict(outcome={self.outcome!r}, is_failure={self.is_failure!r}, conditions={self.conditions!r}, "
                f"status={self.status!r}, kind={self.kind!r})")


def _status_verdict(status: int) -> Verdict:
    conditions = status_bit(status)
    if 500 <= status <= 599:
        conditions |= SERVER_ERROR
        if status in (502, 503, 504):
            conditions |= GATEWAY_ERROR
        return Verdict(Outcome.FAILURE, True, conditions, status)
    if status == 409:
        conditions |= RETRIABLE_4XX
    # 1xx-4xx: the upstream answered; for the breaker that is a healthy endpoint.
    return Verdict(Outcome.SUCCESS, False, conditions, status)


# Index = status - 100; built once, never mutated.
_STATUS_TABLE: Final[tuple[Verdict, ...]] = tuple(
    _status_verdict(status) for status in range(_MIN_STATUS, _MAX_STATUS + 1))


def _out_of_range(status: int) -> Verdict:
    # llhttp accepts any three digits; a status outside 100..599 satisfies no condition and, not being
    # a 5xx, is no failure. Rare enough to allocate.
    return Verdict(Outcome.SUCCESS, False, 0, status)


def classify_status(status: int) -> Verdict:
    """The verdict of a response head with this status code."""
    if _MIN_STATUS <= status <= _MAX_STATUS:
        return _STATUS_TABLE[status - _MIN_STATUS]
    return _out_of_range(status)


# Envoy's `5xx` retries on connect failures and resets too ("does not respond at all"); the contract's
# `gateway-error` names only 502/503/504 and the per-try timeout, so those bits stay off here.
_CONNECT: Final = CONNECT_FAILURE | SERVER_ERROR
_RESET: Final = RESET | SERVER_ERROR
# A per-try timeout counts as a 504 (CONTRACT): it satisfies gateway-error, 5xx and a listed "504".
_PER_TRY_TIMEOUT: Final = GATEWAY_ERROR | SERVER_ERROR | (1 << (STATUS_BIT_BASE + 504 - _MIN_STATUS))

# One shared verdict per kind. Looked up by an identity chain, not a dict: hashing an Enum member runs
# Python-level `Enum.__hash__`, several times slower than a few `is` tests.
_CONNECT_REFUSED: Final = Verdict(Outcome.CONNECT_FAILURE, True, _CONNECT, 0, FailureKind.CONNECT_REFUSED)
_CONNECT_TIMEOUT: Final = Verdict(Outcome.CONNECT_FAILURE, True, _CONNECT, 0, FailureKind.CONNECT_TIMEOUT)
_UNROUTABLE: Final = Verdict(Outcome.CONNECT_FAILURE, True, _CONNECT, 0, FailureKind.UNROUTABLE)
_RESET_VERDICT: Final = Verdict(Outcome.RESET, True, _RESET, 0, FailureKind.RESET)
# A garbled response head is, like a reset, "no complete response head": Envoy resets the stream with
# reason ProtocolError and retries it under `reset`/`5xx`. The metric calls it a failure.
_PROTOCOL: Final = Verdict(Outcome.FAILURE, True, _RESET, 0, FailureKind.PROTOCOL)
# An oversize response head is a protocol failure of the upstream's (Envoy: 502, reason ProtocolError).
_HEADERS_TOO_LARGE: Final = Verdict(Outcome.FAILURE, True, _RESET, 0, FailureKind.HEADERS_TOO_LARGE)
# A timeout that is not the per-try one (the route deadline, the stream idle timer) bounds the whole
# request, so nothing may retry it; the breaker still counts it.
_TIMEOUT: Final = Verdict(Outcome.TIMEOUT, True, 0, 0, FailureKind.TIMEOUT)
_PER_TRY_TIMEOUT_VERDICT: Final = Verdict(Outcome.TIMEOUT, True, _PER_TRY_TIMEOUT, 0, FailureKind.TIMEOUT)
_CANCELLED: Final = Verdict(Outcome.CANCELLED, False, 0)

_KIND_CONNECT_REFUSED: Final = FailureKind.CONNECT_REFUSED
_KIND_CONNECT_TIMEOUT: Final = FailureKind.CONNECT_TIMEOUT
_KIND_UNROUTABLE: Final = FailureKind.UNROUTABLE
_KIND_RESET: Final = FailureKind.RESET
_KIND_TIMEOUT: Final = FailureKind.TIMEOUT
_KIND_PROTOCOL: Final = FailureKind.PROTOCOL
_KIND_HEADERS_TOO_LARGE: Final = FailureKind.HEADERS_TOO_LARGE


def classify_failure(kind: FailureKind, per_try_timeout: bool = False) -> Verdict:
    """The verdict of an attempt that produced no (complete) response head.

    `per_try_timeout` is True when the attempt's own deadline fired (retriable as a 504); it only
    matters for `FailureKind.TIMEOUT`.
    """
    if kind is _KIND_TIMEOUT:
        return _PER_TRY_TIMEOUT_VERDICT if per_try_timeout else _TIMEOUT
    if kind is _KIND_CONNECT_REFUSED:
        return _CONNECT_REFUSED
    if kind is _KIND_RESET:
        return _RESET_VERDICT
    if kind is _KIND_CONNECT_TIMEOUT:
        return _CONNECT_TIMEOUT
    if kind is _KIND_UNROUTABLE:
        return _UNROUTABLE
    if kind is _KIND_PROTOCOL:
        return _PROTOCOL
    if kind is _KIND_HEADERS_TOO_LARGE:
        return _HEADERS_TOO_LARGE
    # A FailureKind added later must be classified here on purpose, not fall into some other verdict.
    raise ValueError(f"unclassified failure kind {kind!r}")


def _grpc_verdict(status: GrpcStatus) -> Verdict:
    # An answer with HTTP 200 whose grpc-status says what happened: a failure for the breaker and outlier
    # detection when the server could not serve (FAILURE_STATUSES), retriable under the condition naming it.
    conditions = 0
    for name, code in RETRY_CONDITION_STATUS.items():
        if code is status:
            conditions |= _GRPC_BITS[name]
    failed = status in FAILURE_STATUSES
    return Verdict(Outcome.FAILURE if failed else Outcome.SUCCESS, failed, conditions, 200)


# Index = grpc-status; built once.
_GRPC_TABLE: Final[tuple[Verdict, ...]] = tuple(_grpc_verdict(status) for status in GrpcStatus)


def classify_grpc(status: int) -> Verdict:
    """The verdict of a gRPC answer (HTTP 200) with this grpc-status (0..16)."""
    return _GRPC_TABLE[status]


def classify_cancelled() -> Verdict:
    """The downstream went away mid-attempt: no failure, no success, never retried."""
    return _CANCELLED
