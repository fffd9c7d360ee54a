"""Matcher regexes (proxy.routing.regex): RE2, anchored, linear in the input, equal to google-re2's own API."""

from __future__ import annotations

import time

import re2
from hypothesis import given
from hypothesis import strategies as st

from proxy.routing.regex import Regex


def test_anchored_at_both_ends() -> None:
    regex = Regex("/api/v[0-9]+")
    assert regex.fullmatch("/api/v12")
    assert not regex.fullmatch("/api/v1/x") and not regex.fullmatch("/x/api/v1")
    assert Regex("/a|/b").fullmatch("/b") and not Regex("/a|/b").fullmatch("/ab")


def test_text_is_matched_by_character() -> None:
    assert Regex("caf.").fullmatch("café")  # one `.` for one character, as with `re` on str
    assert Regex(r"\w+").fullmatch("abc_1") and not Regex(r"\w+").fullmatch("é")  # RE2's \w is ASCII


def test_a_pattern_that_backtracks_in_re_runs_in_linear_time() -> None:
    regex = Regex(r"/reports/(\w+)*/x")
    started = time.perf_counter()
    for length in (27, 35, 1000, 100_000):
        assert not regex.fullmatch("/reports/" + "a" * (length - 9))
    assert time.perf_counter() - started < 0.5
    assert regex.fullmatch("/reports/abc/x")


def test_the_direct_call_is_used_with_this_google_re2() -> None:
    # The fast path reaches under google-re2's public API; if a new release moves it, this fails loudly
    # (the public API would still be used, about 3 us a match instead of 0.4 us).
    assert Regex("x")._native is not None


_text = st.text(alphabet="ab/1é-", max_size=12)
_patterns = st.sampled_from(["a*", "(a|b)+/?", "[^/]+/1", r"\w*", ".*é.*", "a{2,3}b?", "(?i)A+B*", "/|a+"])


@given(pattern=_patterns, text=_text)
def test_agrees_with_google_re2_fullmatch(pattern: str, text: str) -> None:
    assert Regex(pattern).fullmatch(text) == (re2.fullmatch(pattern, text) is not None)
