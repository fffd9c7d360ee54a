"""Trace context propagation: extract W3C / B3 context on ingress, inject a child span per upstream attempt.

Owns the header side of tracing (the user contract "Request headers the sidecar adds or honours"):
- `extract` reads, in order of preference, W3C `traceparent` (+ `tracestate`), the single `b3` header, then
  the multi-header `x-b3-traceid` / `x-b3-spanid` / `x-b3-sampled` / `x-b3-flags`. Both formats are always
  honoured on extract, whatever `propagation` says (the config contract: "extract either"). A malformed value is
  treated as absent, never as an error: a client's broken header must not fail its request. With no usable
  context a new trace starts, and head sampling (`rng.random() < sampling`) decides it; an incoming sampled
  flag is honoured as is.
- `inject` strips every incoming trace header from the upstream header list and writes `traceparent` for a
  new child span (a fresh random span id per call, i.e. per attempt) whose parent is the incoming span,
  the received `tracestate`, and the single `b3` header when "b3" is configured.

Must not: do I/O, record or export spans (that is `telemetry/tracing.py`, and per the design only for
sampled requests), use regexes or decode header values on this per-request path, or raise on any input
header list.
"""

from __future__ import annotations

import random
from binascii import hexlify
from collections.abc import Iterable
from typing import Final, Literal

from proxy.message import Record

# The format a context was read from; None when the trace was started here.
IncomingFormat = Literal["w3c", "b3", "b3multi"]

_KNOWN_PROPAGATION: Final = frozenset({"w3c", "b3"})

# `bytes.translate(None, _LOWER_HEX)` deletes every lower-case hex digit, so an empty result means "lower
# hex only". bytes.fromhex would also accept upper case and embedded spaces, which W3C and B3 both forbid.
_LOWER_HEX: Final = b"0123456789abcdef"
_DASH: Final = 0x2D  # ord("-"), for indexing bytes without building a one-byte slice.
_ZERO_16: Final = b"0" * 16
_ZERO_32: Final = b"0" * 32
# Last hex digit of the trace-flags byte -> sampled bit (0x01). ASCII parity does not help: 'a' (0x61)
# is odd while 0xa is even, so look the digit up.
_ODD_HEX_DIGITS: Final = frozenset(b"13579bdf")

# Header names extract looks at, mapped to a small int so the scan loop does one dict lookup per header.
_TRACEPARENT: Final = 0
_TRACESTATE: Final = 1
_B3: Final = 2
_X_B3_TRACEID: Final = 3
_X_B3_SPANID: Final = 4
_X_B3_SAMPLED: Final = 5
_X_B3_FLAGS: Final = 6
_EXTRACT_NAMES: Final[dict[bytes, int]] = {
    b"traceparent": _TRACEPARENT,
    b"tracestate": _TRACESTATE,
    b"b3": _B3,
    b"x-b3-traceid": _X_B3_TRACEID,
    b"x-b3-spanid": _X_B3_SPANID,
    b"x-b3-sampled": _X_B3_SAMPLED,
    b"x-b3-flags": _X_B3_FLAGS,
}
# A single-valued name seen twice (two `traceparent` lines, say) is ambiguous, and joined with a comma
# as HTTP allows it would not parse either: the sentinel fails every validator, so it reads as absent.
_DUPLICATE: Final = b"\x00duplicate"

# Removed by inject: everything we rewrite, and all five B3 multi-headers (x-b3-parentspanid too): left
# in place they would describe the incoming span, not ours. An exact set rather than an `x-b3-` prefix
# test: the B3 spec defines only these five, and the prefix test nearly doubled inject's filter cost.
_INJECT_DROP: Final = frozenset({
    b"traceparent", b"tracestate", b"b3",
    b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags",
})

# b3 sampling states: "d" (debug) implies sampled. Multi-header x-b3-sampled also has legacy true/false.
_B3_SAMPLED: Final[dict[bytes, bool]] = {b"1": True, b"0": False, b"d": True}
_X_B3_SAMPLED_VALUES: Final[dict[bytes, bool]] = {b"1": True, b"0": False, b"true": True, b"false": False}


class TraceContext(Record):
    """The trace an incoming request belongs to.

    `parent_span_id` is the incoming span id: the parent of every span `inject` creates. None when the
    trace started here (no incoming context, or a sampling-only `b3: 0`). Treat as read-only.
    """

    # Not a frozen dataclass, unlike other values (the design): one is built per request (see Record).
    __slots__ = ("incoming_format", "parent_span_id", "sampled", "trace_id", "tracestate")
    FIELDS = ("trace_id", "parent_span_id", "sampled", "tracestate", "incoming_format")

    def __init__(self, trace_id: bytes, parent_span_id: bytes | None, sampled: bool, tracestate: bytes | None,
                 incoming_format: IncomingFormat | None) -> None:
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.incoming_format = incoming_format


def _span_id(value: bytes) -> bool:
    """A valid 64-bit id: 16 lower-hex digits, not all zero."""
    return len(value) == 16 and not value.translate(None, _LOWER_HEX) and value != _ZERO_16


def _b3_trace_id(value: bytes) -> bytes | None:
    """A B3 trace id (16 or 32 lower hex, not all zero) as 32 hex: W3C has only 128-bit ids."""
    size = len(value)
    if size == 32:
        if value.translate(None, _LOWER_HEX) or value == _ZERO_32:
            return None
        return value
    if size == 16:
        if value.translate(None, _LOWER_HEX) or value == _ZERO_16:
            return None
        return _ZERO_16 + value
    return None


class TracePropagator:
    """Compiled `tracing:` propagation settings; `extract` per request, `inject` per upstream attempt."""

    __slots__ = ("_b3", "_getrandbits", "_random", "_sampling")

    def __init__(self, inject_b3: bool, sampling: float, rng: random.Random) -> None:
        self._b3 = inject_b3
        self._sampling = sampling
        # Bound once: saves an attribute lookup on the rng per call.
        self._random = rng.random
        self._getrandbits = rng.getrandbits

    @classmethod
    def from_config(cls, propagation: Iterable[str], sampling: float, rng: random.Random) -> TracePropagator:
        """`propagation` lists "w3c" and/or "b3"; W3C `traceparent` is always injected, `b3` only if listed.

        Raises ValueError for an unknown format or a sampling ratio outside [0, 1] (the schema checks
        both; this guards direct construction).
        """
        formats = set(propagation)
        unknown = formats - _KNOWN_PROPAGATION
        if unknown:
            raise ValueError(f"unknown trace propagation format(s): {', '.join(sorted(unknown))}")
        if not 0.0 <= sampling <= 1.0:
            raise ValueError(f"tracing sampling must be within [0, 1], got {sampling}")
        return cls("b3" in formats, sampling, rng)

    @property
    def injects_b3(self) -> bool:
        return self._b3

    def extract(self, headers: list[tuple[bytes, bytes]]) -> TraceContext:
        """The incoming trace context, or a new trace when there is none usable. Never raises."""
        traceparent: bytes | None = None
        tracestate: list[bytes] | None = None
        b3: bytes | None = None
        x_trace: bytes | None = None
        x_span: bytes | None = None
        x_sampled: bytes | None = None
        x_flags: bytes | None = None
        lookup = _EXTRACT_NAMES.get
        # One pass over the headers; most names miss the dict and cost one lookup.
        for name, value in headers:
            kind = lookup(name)
            if kind is None:
                continue
            if kind == _TRACEPARENT:
                traceparent = value if traceparent is None else _DUPLICATE
            elif kind == _TRACESTATE:
                # W3C allows tracestate split over several lines; they join with commas, in order.
                if tracestate is None:
                    tracestate = [value]
                else:
                    tracestate.append(value)
            elif kind == _B3:
                b3 = value if b3 is None else _DUPLICATE
            elif kind == _X_B3_TRACEID:
                x_trace = value if x_trace is None else _DUPLICATE
            elif kind == _X_B3_SPANID:
                x_span = value if x_span is None else _DUPLICATE
            elif kind == _X_B3_SAMPLED:
                x_sampled = value if x_sampled is None else _DUPLICATE
            else:
                x_flags = value if x_flags is None else _DUPLICATE

        if traceparent is not None:
            ctx = self._from_traceparent(traceparent, tracestate)
            if ctx is not None:
                return ctx
        # tracestate is dropped from here on: W3C ties it to a valid traceparent, and with none it
        # describes some other trace.
        return self._from_b3_headers(b3, x_trace, x_span, x_sampled, x_flags)

    def _from_b3_headers(self, b3: bytes | None, x_trace: bytes | None, x_span: bytes | None,
                         x_sampled: bytes | None, x_flags: bytes | None) -> TraceContext:
        """`extract` past a missing or unusable traceparent: the single `b3` header, then the multi-headers,
        else a new trace."""
        if b3 is not None:
            ctx = self._from_b3(b3)
            if ctx is not None:
                return ctx
        if x_trace is not None or x_span is not None or x_sampled is not None or x_flags is not None:
            ctx = self._from_b3_multi(x_trace, x_span, x_sampled, x_flags)
            if ctx is not None:
                return ctx
        return self._new_trace(self._random() < self._sampling, None)

    def inject(self, headers: list[tuple[bytes, bytes]], ctx: TraceContext) -> bytes:
        """Rewrite trace headers in place for a new child span of `ctx`; return its span id (16 hex).

        Call once per upstream attempt: each call draws a new span id, so retries are sibling spans.
        """
        span = self.new_span_id()
        drop = _INJECT_DROP
        for name, _ in headers:
            if name in drop:
                # Rebuild in place (callers hold the list) without the incoming trace headers: stale copies
                # next to ours would give upstreams two disagreeing parents. Most requests carry none.
                headers[:] = [h for h in headers if h[0] not in drop]
                break
        trace_id = ctx.trace_id
        sampled = ctx.sampled
        headers.append((b"traceparent", b"".join((b"00-", trace_id, b"-", span, b"-01" if sampled else b"-00"))))
        if ctx.tracestate is not None:
            headers.append((b"tracestate", ctx.tracestate))
        if self._b3:
            parent = ctx.parent_span_id
            flag = b"-1" if sampled else b"-0"
            if parent is None:
                headers.append((b"b3", b"".join((trace_id, b"-", span, flag))))
            else:
                headers.append((b"b3", b"".join((trace_id, b"-", span, flag, b"-", parent))))
        return span

    def new_span_id(self) -> bytes:
        """A fresh span id: 16 lower-hex digits, never all zero."""
        span_id = self._getrandbits(64)
        while not span_id:  # all-zero is invalid in both formats; practically never loops
            span_id = self._getrandbits(64)
        # hexlify, not a `%` format: compiled (mypyc), a `%` stays a generic operator call, about twice the
        # cost (docs/decisions/0008).
        return hexlify(span_id.to_bytes(8, "big"))

    def _new_trace(self, sampled: bool, incoming_format: IncomingFormat | None) -> TraceContext:
        trace_id = self._getrandbits(128)
        while not trace_id:
            trace_id = self._getrandbits(128)
        return TraceContext(hexlify(trace_id.to_bytes(16, "big")), None, sampled, None, incoming_format)

    def _from_traceparent(self, value: bytes, tracestate: list[bytes] | None) -> TraceContext | None:
        # version 00 only, exactly 55 bytes: 00-{32 hex trace}-{16 hex span}-{2 hex flags}. Other
        # versions are treated as absent rather than parsed by their version-00 prefix.
        # Deleting every lower-hex digit must leave exactly the three dashes, and those must sit at the
        # field boundaries: one C-level pass validates charset, case and layout together.
        if (len(value) != 55 or not value[2] == value[35] == value[52] == _DASH
                or value[:2] != b"00" or value.translate(None, _LOWER_HEX) != b"---"):
            return None
        trace_id = value[3:35]
        span_id = value[36:52]
        if trace_id == _ZERO_32 or span_id == _ZERO_16:
            return None
        state = None
        if tracestate is not None:
            state = tracestate[0] if len(tracestate) == 1 else b",".join(tracestate)
        return TraceContext(trace_id, span_id, value[54] in _ODD_HEX_DIGITS, state, "w3c")

    def _from_b3(self, value: bytes) -> TraceContext | None:
        # b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]], or a lone sampling state ("0", "1", "d").
        if len(value) == 1:
            decision = _B3_SAMPLED.get(value)
            return None if decision is None else self._new_trace(decision, "b3")
        parts = value.split(b"-")
        count = len(parts)
        if count < 2 or count > 4:
            return None
        trace_id = _b3_trace_id(parts[0])
        span_id = parts[1]
        if trace_id is None or not _span_id(span_id):
            return None
        if count >= 3:
            flag = _B3_SAMPLED.get(parts[2])
            if flag is None:
                return None
            sampled = flag
            # The incoming parent is the grandparent of our spans: validated, then not kept.
            if count == 4 and not _span_id(parts[3]):
                return None
        else:
            # Ids without a decision means "deferred": nobody upstream decided, so head sampling does.
            sampled = self._random() < self._sampling
        return TraceContext(trace_id, span_id, sampled, None, "b3")

    def _from_b3_multi(self, trace: bytes | None, span: bytes | None, sampled_value: bytes | None,
                       flags: bytes | None) -> TraceContext | None:
        # x-b3-flags: 1 is debug, which implies sampled and overrides x-b3-sampled. An unreadable
        # x-b3-sampled is ignored as absent (deferred), like any other malformed header.
        decision: bool | None = True if flags == b"1" else None
        if decision is None and sampled_value is not None:
            decision = _X_B3_SAMPLED_VALUES.get(sampled_value)
        if trace is None and span is None:
            # Sampling-only headers: a decision without ids starts a new trace with that decision.
            return None if decision is None else self._new_trace(decision, "b3multi")
        if trace is None or span is None:
            return None
        trace_id = _b3_trace_id(trace)
        if trace_id is None or not _span_id(span):
            return None
        if decision is None:
            decision = self._random() < self._sampling
        return TraceContext(trace_id, span, decision, None, "b3multi")
