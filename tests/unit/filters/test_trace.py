"""Trace propagation: W3C / b3 single / b3 multi extract, invalid input as absent, per-attempt inject."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.filters.trace import TraceContext, TracePropagator

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = b"00f067aa0ba902b7"
TP_SAMPLED = b"00-" + TRACE + b"-" + SPAN + b"-01"
TP_UNSAMPLED = b"00-" + TRACE + b"-" + SPAN + b"-00"
TRACEPARENT_RE = re.compile(rb"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")
B3_RE = re.compile(rb"^[0-9a-f]{32}-[0-9a-f]{16}-[01](-[0-9a-f]{16})?$")

Headers = list[tuple[bytes, bytes]]


class NoDraws(random.Random):
    """A Random that fails the test if a sampling decision is drawn (the incoming flag must be used)."""

    def random(self) -> float:
        raise AssertionError("an incoming sampling decision must be honoured, not re-drawn")


def propagator(*formats: str, sampling: float = 0.0, rng: random.Random | None = None) -> TracePropagator:
    return TracePropagator.from_config(list(formats or ("w3c",)), sampling, rng or random.Random(7))


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


# --- W3C -------------------------------------------------------------------------------------------------


def test_w3c_sampled() -> None:
    ctx = propagator(rng=NoDraws()).extract([(b"traceparent", TP_SAMPLED)])
    assert ctx == TraceContext(TRACE, SPAN, True, None, "w3c")


def test_w3c_unsampled_flag_honoured_even_at_full_sampling() -> None:
    ctx = propagator(sampling=1.0, rng=NoDraws()).extract([(b"traceparent", TP_UNSAMPLED)])
    assert ctx.sampled is False and ctx.trace_id == TRACE


@pytest.mark.parametrize(("flags", "sampled"), [(b"01", True), (b"00", False), (b"03", True),
                                                 (b"0b", True), (b"0a", False), (b"ff", True)])
def test_w3c_sampled_bit_is_the_low_bit_of_flags(flags: bytes, sampled: bool) -> None:
    ctx = propagator().extract([(b"traceparent", b"00-" + TRACE + b"-" + SPAN + b"-" + flags)])
    assert ctx.incoming_format == "w3c" and ctx.sampled is sampled


def test_tracestate_kept_as_received_and_multiple_lines_joined() -> None:
    p = propagator()
    ctx = p.extract([(b"traceparent", TP_SAMPLED), (b"tracestate", b"congo=t61rcWkgMzE")])
    assert ctx.tracestate == b"congo=t61rcWkgMzE"
    ctx = p.extract([(b"tracestate", b"a=1"), (b"traceparent", TP_SAMPLED), (b"tracestate", b"b=2")])
    assert ctx.tracestate == b"a=1,b=2"


@pytest.mark.parametrize("value", [
    b"01-" + TRACE + b"-" + SPAN + b"-01",                     # unknown version
    b"ff-" + TRACE + b"-" + SPAN + b"-01",                     # forbidden version
    b"00-" + TRACE + b"-" + SPAN + b"-01-extra",               # version 00 is exactly 55 bytes
    b"00-" + TRACE[:-1] + b"-" + SPAN + b"-01",                # short trace id
    b"00-" + TRACE + b"-" + SPAN[:-1] + b"-01",                # short span id
    b"00-" + TRACE + b"-" + SPAN + b"-1",                      # short flags
    b"00-" + TRACE + b"a-" + SPAN[1:] + b"-01",                # right length, misplaced dash
    b"00-" + TRACE.upper() + b"-" + SPAN + b"-01",             # upper-case hex
    b"00-" + TRACE + b"-" + SPAN.upper() + b"-01",
    b"00-" + TRACE + b"-" + SPAN + b"-0A",
    b"00-" + b"0" * 32 + b"-" + SPAN + b"-01",                 # all-zero trace id
    b"00-" + TRACE + b"-" + b"0" * 16 + b"-01",                # all-zero span id
    b"00-" + TRACE[:-2] + b"zz-" + SPAN + b"-01",              # not hex
    b"00-" + TRACE[:-2] + b" a-" + SPAN + b"-01",              # space (bytes.fromhex would accept)
    b"00-" + TRACE + b"-" + SPAN[:-1] + b"--1",                # extra dash inside flags
    b"",
])
def test_invalid_traceparent_is_absent(value: bytes) -> None:
    ctx = propagator(sampling=1.0).extract([(b"traceparent", value), (b"tracestate", b"a=1")])
    assert ctx.incoming_format is None
    assert ctx.parent_span_id is None and ctx.trace_id != TRACE
    assert ctx.sampled is True  # a new trace: head sampling at 1.0 decides
    assert ctx.tracestate is None  # W3C: tracestate goes with an invalid traceparent


def test_duplicate_traceparent_is_absent() -> None:
    ctx = propagator().extract([(b"traceparent", TP_SAMPLED), (b"traceparent", TP_SAMPLED)])
    assert ctx.incoming_format is None


def test_invalid_traceparent_falls_back_to_b3() -> None:
    ctx = propagator().extract([(b"traceparent", b"garbage"), (b"b3", TRACE + b"-" + SPAN + b"-1")])
    assert ctx == TraceContext(TRACE, SPAN, True, None, "b3")


def test_w3c_wins_over_b3() -> None:
    other = b"a" * 32
    ctx = propagator().extract([(b"b3", other + b"-" + SPAN + b"-0"), (b"traceparent", TP_SAMPLED)])
    assert ctx.trace_id == TRACE and ctx.incoming_format == "w3c"


# --- b3 single header -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "sampled"), [
    (TRACE + b"-" + SPAN + b"-1", True),
    (TRACE + b"-" + SPAN + b"-0", False),
    (TRACE + b"-" + SPAN + b"-d", True),
    (TRACE + b"-" + SPAN + b"-1-" + b"05e3ac9a4f6e3b90", True),
    (TRACE + b"-" + SPAN + b"-0-" + b"05e3ac9a4f6e3b90", False),
])
def test_b3_single(value: bytes, sampled: bool) -> None:
    ctx = propagator(sampling=0.5, rng=NoDraws()).extract([(b"b3", value)])
    assert ctx == TraceContext(TRACE, SPAN, sampled, None, "b3")


def test_b3_single_64_bit_trace_id_is_left_padded() -> None:
    ctx = propagator().extract([(b"b3", b"a3ce929d0e0e4736-" + SPAN + b"-1")])
    assert ctx.trace_id == b"0000000000000000a3ce929d0e0e4736"
    assert ctx.parent_span_id == SPAN


def test_b3_single_deferred_decision_uses_head_sampling() -> None:
    assert propagator(sampling=1.0).extract([(b"b3", TRACE + b"-" + SPAN)]).sampled is True
    ctx = propagator(sampling=0.0).extract([(b"b3", TRACE + b"-" + SPAN)])
    assert ctx.sampled is False and ctx.parent_span_id == SPAN


@pytest.mark.parametrize(("value", "sampled"), [(b"0", False), (b"d", True), (b"1", True)])
def test_b3_sampling_only_starts_a_trace_with_that_decision(value: bytes, sampled: bool) -> None:
    ctx = propagator(sampling=1.0 - sampled, rng=random.Random(1)).extract([(b"b3", value)])
    assert ctx.sampled is sampled
    assert ctx.parent_span_id is None and ctx.incoming_format == "b3"
    assert len(ctx.trace_id) == 32 and ctx.trace_id != b"0" * 32


@pytest.mark.parametrize("value", [
    TRACE,                                                  # no span id
    TRACE + b"-" + SPAN + b"-2",                            # unknown sampling state
    TRACE + b"-" + SPAN + b"-1-" + b"05e3ac9a4f6e3b9",      # short parent
    TRACE + b"-" + SPAN + b"-1-" + b"05e3ac9a4f6e3b90-x",   # too many fields
    TRACE[:-1] + b"-" + SPAN + b"-1",                       # 31-hex trace id
    b"a3ce929d0e0e473-" + SPAN + b"-1",                     # 15-hex trace id
    TRACE.upper() + b"-" + SPAN + b"-1",
    b"0" * 32 + b"-" + SPAN + b"-1",
    b"0" * 16 + b"-" + SPAN + b"-1",
    TRACE + b"-" + b"0" * 16 + b"-1",
    TRACE + b"--1",
    b"x",
    b"",
])
def test_invalid_b3_single_is_absent(value: bytes) -> None:
    ctx = propagator().extract([(b"b3", value)])
    assert ctx.incoming_format is None and ctx.parent_span_id is None


# --- b3 multi-header ------------------------------------------------------------------------------------


def test_b3_multi() -> None:
    headers = [(b"x-b3-traceid", TRACE), (b"x-b3-spanid", SPAN), (b"x-b3-sampled", b"1"),
               (b"x-b3-parentspanid", b"05e3ac9a4f6e3b90")]
    assert propagator(rng=NoDraws()).extract(headers) == TraceContext(TRACE, SPAN, True, None, "b3multi")


def test_b3_multi_64_bit_trace_id_unsampled() -> None:
    headers = [(b"x-b3-traceid", b"a3ce929d0e0e4736"), (b"x-b3-spanid", SPAN), (b"x-b3-sampled", b"0")]
    ctx = propagator(sampling=1.0, rng=NoDraws()).extract(headers)
    assert ctx == TraceContext(b"0" * 16 + b"a3ce929d0e0e4736", SPAN, False, None, "b3multi")


def test_b3_multi_debug_flag_means_sampled() -> None:
    headers = [(b"x-b3-traceid", TRACE), (b"x-b3-spanid", SPAN), (b"x-b3-flags", b"1"),
               (b"x-b3-sampled", b"0")]
    assert propagator(rng=NoDraws()).extract(headers).sampled is True


def test_b3_multi_legacy_true_false() -> None:
    base = [(b"x-b3-traceid", TRACE), (b"x-b3-spanid", SPAN)]
    assert propagator(rng=NoDraws()).extract([*base, (b"x-b3-sampled", b"true")]).sampled is True
    assert propagator(rng=NoDraws()).extract([*base, (b"x-b3-sampled", b"false")]).sampled is False


def test_b3_multi_sampling_only() -> None:
    ctx = propagator(sampling=1.0).extract([(b"x-b3-sampled", b"0")])
    assert ctx.sampled is False and ctx.parent_span_id is None and ctx.incoming_format == "b3multi"


def test_b3_multi_unreadable_sampled_is_deferred() -> None:
    headers = [(b"x-b3-traceid", TRACE), (b"x-b3-spanid", SPAN), (b"x-b3-sampled", b"yes")]
    ctx = propagator(sampling=1.0).extract(headers)
    assert ctx.parent_span_id == SPAN and ctx.sampled is True


@pytest.mark.parametrize("headers", [
    [(b"x-b3-traceid", TRACE)],
    [(b"x-b3-spanid", SPAN), (b"x-b3-sampled", b"1")],
    [(b"x-b3-traceid", TRACE.upper()), (b"x-b3-spanid", SPAN)],
    [(b"x-b3-traceid", TRACE), (b"x-b3-spanid", b"0" * 16)],
    [(b"x-b3-traceid", TRACE), (b"x-b3-spanid", SPAN), (b"x-b3-spanid", SPAN)],
])
def test_invalid_b3_multi_is_absent(headers: Headers) -> None:
    ctx = propagator().extract(headers)
    assert ctx.incoming_format is None and ctx.parent_span_id is None


def test_b3_single_wins_over_multi_and_invalid_single_falls_back() -> None:
    multi = [(b"x-b3-traceid", b"b" * 32), (b"x-b3-spanid", b"c" * 16), (b"x-b3-sampled", b"1")]
    assert propagator().extract([(b"b3", TRACE + b"-" + SPAN), *multi]).trace_id == TRACE
    assert propagator().extract([(b"b3", b"junk"), *multi]).trace_id == b"b" * 32


# --- new traces and head sampling -----------------------------------------------------------------------


def test_no_context_starts_a_new_trace() -> None:
    ctx = propagator().extract([(b"accept", b"*/*")])
    assert ctx.parent_span_id is None and ctx.incoming_format is None and ctx.tracestate is None
    assert re.fullmatch(rb"[0-9a-f]{32}", ctx.trace_id) and ctx.trace_id != b"0" * 32


def test_head_sampling_ratio() -> None:
    p = propagator(sampling=0.25, rng=random.Random(42))
    hits = sum(p.extract([]).sampled for _ in range(4000))
    assert 850 < hits < 1150
    assert not any(propagator(sampling=0.0).extract([]).sampled for _ in range(200))
    assert all(propagator(sampling=1.0).extract([]).sampled for _ in range(200))


def test_new_trace_ids_differ() -> None:
    p = propagator()
    assert len({p.extract([]).trace_id for _ in range(100)}) == 100


# --- inject ---------------------------------------------------------------------------------------------


def test_inject_new_span_per_attempt_same_trace() -> None:
    p = propagator()
    ctx = p.extract([(b"traceparent", TP_SAMPLED)])
    first: Headers = [(b"traceparent", TP_SAMPLED)]
    second: Headers = [(b"traceparent", TP_SAMPLED)]
    span1 = p.inject(first, ctx)
    span2 = p.inject(second, ctx)
    assert span1 != span2 and SPAN not in (span1, span2)
    assert values(first, b"traceparent") == [b"00-" + TRACE + b"-" + span1 + b"-01"]
    assert values(second, b"traceparent") == [b"00-" + TRACE + b"-" + span2 + b"-01"]


def test_inject_unsampled_flag_and_tracestate_kept() -> None:
    p = propagator()
    incoming = [(b"traceparent", TP_UNSAMPLED), (b"tracestate", b"congo=t61rcWkgMzE"), (b"accept", b"*/*")]
    ctx = p.extract(incoming)
    headers = list(incoming)
    span = p.inject(headers, ctx)
    assert headers == [(b"accept", b"*/*"), (b"traceparent", b"00-" + TRACE + b"-" + span + b"-00"),
                       (b"tracestate", b"congo=t61rcWkgMzE")]


def test_inject_drops_stale_tracestate_of_an_invalid_traceparent() -> None:
    p = propagator()
    incoming = [(b"traceparent", b"00-bad"), (b"tracestate", b"a=1")]
    headers = list(incoming)
    p.inject(headers, p.extract(incoming))
    assert values(headers, b"tracestate") == []


def test_inject_strips_every_incoming_trace_header() -> None:
    p = propagator()
    incoming = [(b"b3", TRACE + b"-" + SPAN + b"-1"), (b"x-b3-traceid", TRACE), (b"x-b3-spanid", SPAN),
                (b"x-b3-parentspanid", b"05e3ac9a4f6e3b90"), (b"x-b3-sampled", b"1"), (b"x-b3-flags", b"1"),
                (b"host", b"svc"), (b"traceparent", b"garbage")]
    headers = list(incoming)
    span = p.inject(headers, p.extract(incoming))
    assert headers == [(b"host", b"svc"), (b"traceparent", b"00-" + TRACE + b"-" + span + b"-01")]


def test_inject_edits_the_callers_list_in_place() -> None:
    p = propagator()
    headers: Headers = [(b"traceparent", TP_SAMPLED)]
    alias = headers
    p.inject(headers, p.extract(headers))
    assert alias is headers and len(alias) == 1 and alias[0][1] != TP_SAMPLED


def test_b3_injected_only_when_configured() -> None:
    incoming = [(b"traceparent", TP_SAMPLED)]
    w3c_only = propagator("w3c")
    headers = list(incoming)
    w3c_only.inject(headers, w3c_only.extract(incoming))
    assert values(headers, b"b3") == []

    both = propagator("w3c", "b3")
    headers = list(incoming)
    span = both.inject(headers, both.extract(incoming))
    assert values(headers, b"b3") == [TRACE + b"-" + span + b"-1-" + SPAN]
    assert len(values(headers, b"traceparent")) == 1


def test_b3_parent_omitted_for_a_new_trace_and_unsampled_flag() -> None:
    p = propagator("b3", sampling=0.0)
    ctx = p.extract([])
    headers: Headers = []
    span = p.inject(headers, ctx)
    assert values(headers, b"b3") == [ctx.trace_id + b"-" + span + b"-0"]
    # "b3" alone still injects traceparent: W3C is always written.
    assert values(headers, b"traceparent") == [b"00-" + ctx.trace_id + b"-" + span + b"-00"]


def test_parent_of_new_span_is_the_incoming_span_from_b3_64_bit() -> None:
    p = propagator("w3c", "b3")
    incoming = [(b"x-b3-traceid", b"a3ce929d0e0e4736"), (b"x-b3-spanid", SPAN), (b"x-b3-sampled", b"1")]
    headers = list(incoming)
    span = p.inject(headers, p.extract(incoming))
    padded = b"0" * 16 + b"a3ce929d0e0e4736"
    assert headers == [(b"traceparent", b"00-" + padded + b"-" + span + b"-01"),
                       (b"b3", padded + b"-" + span + b"-1-" + SPAN)]


def test_injected_span_id_is_never_zero() -> None:
    class ZeroFirst(random.Random):
        calls = 0

        def getrandbits(self, k: int) -> int:
            self.calls += 1
            return 0 if self.calls == 1 else super().getrandbits(k)

    p = propagator(rng=ZeroFirst(3))
    ctx = TraceContext(TRACE, SPAN, True, None, "w3c")
    span = p.inject([], ctx)
    assert span != b"0" * 16 and len(span) == 16


# --- config ---------------------------------------------------------------------------------------------


def test_from_config_refuses_unknown_format_and_bad_ratio() -> None:
    with pytest.raises(ValueError, match="jaeger"):
        TracePropagator.from_config(["w3c", "jaeger"], 0.1, random.Random())
    with pytest.raises(ValueError, match="sampling"):
        TracePropagator.from_config(["w3c"], 1.5, random.Random())
    assert TracePropagator.from_config(["b3"], 0.1, random.Random()).injects_b3
    assert not TracePropagator.from_config(["w3c"], 0.1, random.Random()).injects_b3


# --- property -------------------------------------------------------------------------------------------

_names = st.sampled_from([b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid",
                          b"x-b3-sampled", b"x-b3-flags", b"x-b3-parentspanid", b"host", b"accept"])
_hex = st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=34).map(str.encode)
_dash_joined = st.lists(st.one_of(_hex, st.sampled_from([b"0", b"1", b"d", b"00", b"01", b"ff"])),
                        min_size=1, max_size=5).map(b"-".join)
_garbage = st.one_of(st.binary(max_size=60), _dash_joined,
                     st.builds(lambda t, s, f: b"00-" + t + b"-" + s + b"-" + f, _hex, _hex, _hex))
_headers = st.lists(st.tuples(_names, _garbage), max_size=8)


@settings(max_examples=400, deadline=None)
@given(headers=_headers, b3=st.booleans(), sampling=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 99))
def test_extract_never_raises_and_inject_writes_one_valid_traceparent(
    headers: Headers, b3: bool, sampling: float, seed: int
) -> None:
    p = propagator("w3c", *(["b3"] if b3 else []), sampling=sampling, rng=random.Random(seed))
    ctx = p.extract(headers)
    assert re.fullmatch(rb"[0-9a-f]{32}", ctx.trace_id) and ctx.trace_id != b"0" * 32
    out = list(headers)
    span = p.inject(out, ctx)
    traceparents = values(out, b"traceparent")
    assert len(traceparents) == 1
    assert TRACEPARENT_RE.match(traceparents[0])
    assert traceparents[0][3:35] == ctx.trace_id and traceparents[0][36:52] == span
    # inject's output must itself extract as valid W3C, with the decision carried over.
    again = p.extract(out)
    assert (again.trace_id, again.parent_span_id, again.sampled) == (ctx.trace_id, span, ctx.sampled)
    assert not [n for n, _ in out if n.startswith(b"x-b3-")]
    b3_values = values(out, b"b3")
    if b3:
        assert len(b3_values) == 1 and B3_RE.match(b3_values[0])
    else:
        assert b3_values == []
