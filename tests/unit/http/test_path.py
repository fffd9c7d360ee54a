"""Path normalization (proxy.http.path): each mode on the shapes that bypass prefix routes, and properties
that hold for any input: idempotence, no dot segment left, only the documented refusals, `%2F` kept."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.path import (
    BASE,
    DECODE_AND_MERGE_SLASHES,
    MERGE_SLASHES,
    MODES,
    NONE,
    normalize_path,
    refusal,
    without_fragment,
)

ALL = (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)
NORMALIZING = (BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)


def test_the_config_names_are_istios() -> None:
    assert MODES == {"none": NONE, "base": BASE, "merge_slashes": MERGE_SLASHES,
                     "decode_and_merge_slashes": DECODE_AND_MERGE_SLASHES}


# (input, (none, base, merge_slashes, decode_and_merge_slashes)); None = refused.
CASES: list[tuple[bytes, tuple[bytes | None, ...]]] = [
    (b"/api/v1/campaigns", (b"/api/v1/campaigns",) * 4),
    (b"/", (b"/",) * 4),
    (b"/api/../admin", (b"/api/../admin", b"/admin", b"/admin", b"/admin")),
    (b"/%61dmin", (b"/%61dmin", b"/admin", b"/admin", b"/admin")),
    (b"//admin", (b"//admin", b"//admin", b"/admin", b"/admin")),
    (b"/./admin", (b"/./admin", b"/admin", b"/admin", b"/admin")),
    # RFC 3986 5.2.4 examples, and a trailing dot segment leaving a trailing slash.
    (b"/a/b/c/./../../g", (b"/a/b/c/./../../g", b"/a/g", b"/a/g", b"/a/g")),
    (b"/a/b/..", (b"/a/b/..", b"/a/", b"/a/", b"/a/")),
    (b"/a/.", (b"/a/.", b"/a/", b"/a/", b"/a/")),
    (b"/a/..", (b"/a/..", b"/", b"/", b"/")),
    # Dots as escapes are dots; a dot inside a segment is just a dot.
    (b"/a/%2e%2E/b", (b"/a/%2e%2E/b", b"/b", b"/b", b"/b")),
    (b"/.well-known/x/...", (b"/.well-known/x/...",) * 4),
    # An empty segment is a segment (Chromium, RFC 3986): `..` removes it; merging comes afterwards.
    (b"/a//../b", (b"/a//../b", b"/a/b", b"/a/b", b"/a/b")),
    # Backslashes are slashes (Envoy, Istio's BASE); their escapes only in decode_and_merge_slashes.
    (b"/a\\..\\b", (b"/a\\..\\b", b"/b", b"/b", b"/b")),
    (b"/a%5Cb%5c", (b"/a%5Cb%5c", b"/a%5Cb%5c", b"/a%5Cb%5c", b"/a/b/")),
    (b"/a%2Fb%2f", (b"/a%2Fb%2f", b"/a%2Fb%2f", b"/a%2Fb%2f", b"/a/b/")),
    (b"/x%2F..%2Fadmin", (b"/x%2F..%2Fadmin", b"/x%2F..%2Fadmin", b"/x%2F..%2Fadmin", b"/admin")),
    # Unreserved escapes decoded, either hex case; others kept as sent (hex case too), invalid ones too.
    (b"/%7e%7E%41%2d%5F", (b"/%7e%7E%41%2d%5F", b"/~~A-_", b"/~~A-_", b"/~~A-_")),
    (b"/a%3ab%3A%20%25", (b"/a%3ab%3A%20%25",) * 4),
    (b"/100%/%zz/%4", (b"/100%/%zz/%4",) * 4),
    # A lone `%` that decoding would complete into an escape becomes `%25` (Chromium's nested-escape rule).
    (b"/%%361dmin", (b"/%%361dmin", b"/%2561dmin", b"/%2561dmin", b"/%2561dmin")),
    (b"/%%34%31", (b"/%%34%31", b"/%2541", b"/%2541", b"/%2541")),
    (b"/%2%46", (b"/%2%46", b"/%252F", b"/%252F", b"/%252F")),
    (b"/%a%31", (b"/%a%31", b"/%25a1", b"/%25a1", b"/%25a1")),
    # Refused: above the root, however spelled, and an encoded NUL.
    (b"/..", (b"/..", None, None, None)),
    (b"/../x", (b"/../x", None, None, None)),
    (b"/a/../../x", (b"/a/../../x", None, None, None)),
    (b"/%2e%2e/x", (b"/%2e%2e/x", None, None, None)),
    (b"/a%2F..%2F..%2Fx", (b"/a%2F..%2F..%2Fx", b"/a%2F..%2F..%2Fx", b"/a%2F..%2F..%2Fx", None)),
    (b"/a%00", (b"/a%00", None, None, None)),
    # Not origin-form (OPTIONS *): left alone.
    (b"*", (b"*",) * 4),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_each_mode(raw: bytes, expected: tuple[bytes | None, ...]) -> None:
    assert tuple(normalize_path(raw, mode) for mode in ALL) == expected


def test_the_fast_path_returns_the_same_object() -> None:
    path = b"/api/v1/campaigns/42"
    for mode in ALL:
        assert normalize_path(path, mode) is path
    assert normalize_path(b"/a//b", BASE) == b"/a//b"  # base keeps `//` without leaving the fast path


def test_the_fragment_is_cut_at_the_first_hash() -> None:
    assert without_fragment(b"/a?q=1#frag#more?x") == b"/a?q=1"
    assert without_fragment(b"/a#") == b"/a"
    path = b"/a?q=1"
    assert without_fragment(path) is path


def test_refusal_says_why() -> None:
    assert refusal(b"/../x") == "path climbs above the root"
    assert refusal(b"/a%00") == "path encodes NUL (%00)"


# Paths built from the bytes that matter to normalization, so hypothesis reaches the interesting cases.
_PIECES = [b"/", b".", b"..", b"%", b"%2e", b"%2E", b"%2f", b"%2F", b"%5c", b"%5C", b"\\", b"%25", b"%00",
           b"%4", b"%41", b"%61", b"%7e", b"%3A", b"2", b"e", b"F", b"a", b"b", b"1", b"6", b"~", b"?", b"#"]
_paths = st.lists(st.sampled_from(_PIECES), max_size=16).map(lambda pieces: b"/" + b"".join(pieces))
_any_paths = _paths | st.binary(max_size=40).map(lambda raw: b"/" + raw)
_modes = st.sampled_from(NORMALIZING)


def _segments(path: bytes) -> list[bytes]:
    return path.split(b"/")[1:]


@settings(max_examples=400, deadline=None)
@given(path=_any_paths, mode=_modes)
def test_normalizing_twice_gives_what_normalizing_once_gave(path: bytes, mode: int) -> None:
    once = normalize_path(path, mode)
    if once is not None:
        assert normalize_path(once, mode) == once


@settings(max_examples=400, deadline=None)
@given(path=_any_paths, mode=_modes)
def test_no_dot_segment_is_left_and_refusals_are_only_the_documented_ones(path: bytes, mode: int) -> None:
    result = normalize_path(path, mode)
    if result is None:
        assert refusal(path) in ("path climbs above the root", "path encodes NUL (%00)")
        if b"%00" not in path:
            # It really climbs: resolving `..` against a deep enough base stays below that base.
            assert normalize_path(b"/x" * 20 + path, mode) is not None
        return
    assert result.startswith(b"/")
    assert b"/./" not in result + b"/" and b"/../" not in result + b"/"
    assert b"." not in _segments(result) and b".." not in _segments(result)
    assert b"\\" not in result
    if mode != BASE:
        assert b"//" not in result


_ESCAPED_SLASHES = ((b"%2F", b"\x01"), (b"%2f", b"\x02"), (b"%5C", b"\x03"), (b"%5c", b"\x04"))


@settings(max_examples=300, deadline=None)
@given(path=_paths, mode=st.sampled_from((BASE, MERGE_SLASHES)))
def test_escaped_slashes_are_opaque_to_base_and_merge_slashes(path: bytes, mode: int) -> None:
    # An escaped slash behaves exactly as an ordinary character would (never a separator) and comes out
    # spelled as it was sent: normalizing with each escape swapped for a plain byte, then swapping back,
    # gives the same answer.
    marked = path
    for escape, marker in _ESCAPED_SLASHES:
        marked = marked.replace(escape, marker)
    expected = normalize_path(marked, mode)
    if expected is not None:
        for escape, marker in _ESCAPED_SLASHES:
            expected = expected.replace(marker, escape)
    assert normalize_path(path, mode) == expected


@given(path=_any_paths)
def test_none_changes_nothing(path: bytes) -> None:
    assert normalize_path(path, NONE) is path
