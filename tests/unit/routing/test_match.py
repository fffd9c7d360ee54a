"""Route matcher semantics (CONTRACT.md: matchers) and a property test against a naive reference."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.model import RouteMatchConfig
from proxy.routing.match import QueryParams, RouteMatcher
from tests.unit.heads import make_head


def matcher(**match: Any) -> RouteMatcher:
    return RouteMatcher.from_config(RouteMatchConfig.model_validate(match))


def test_empty_match_matches_everything() -> None:
    assert matcher().matches(make_head("/anything", method=b"DELETE", authority="x.y"))


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        ({"exact": "/a"}, "/a", True),
        ({"exact": "/a"}, "/a/", False),
        ({"exact": "/a"}, "/ab", False),
        ({"prefix": "/api"}, "/api", True),
        ({"prefix": "/api"}, "/api/x", True),
        ({"prefix": "/api"}, "/apix", True),  # plain string prefix, as Envoy's `prefix`
        ({"prefix": "/api"}, "/ap", False),
        ({"regex": "/api/v[0-9]+"}, "/api/v1", True),
        ({"regex": "/api/v[0-9]+"}, "/api/v1/x", False),  # anchored at the end
        ({"regex": "/api/v[0-9]+"}, "/x/api/v1", False),  # anchored at the start
        ({"regex": "/api/v[0-9]+/.*"}, "/api/v12/x", True),
        ({"regex": "/a|/b"}, "/a", True),
        ({"regex": "/a|/b"}, "/ab", False),  # alternation is anchored as a whole
    ],
)
def test_path(match: dict[str, str], path: str, expected: bool) -> None:
    assert matcher(**match).matches(make_head(path)) is expected


def test_path_matchers_never_see_the_query() -> None:
    head = make_head("/a", query=b"x=1")
    assert matcher(exact="/a").matches(head)
    assert matcher(regex="/a").matches(head)


@pytest.mark.parametrize(
    ("host", "authority", "expected"),
    [
        ("example.com", "example.com", True),
        ("example.com", "www.example.com", False),
        ("Example.COM", "example.com", True),  # case-insensitive: config side folded at compile
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),  # never the bare domain
        ("*.example.com", ".example.com", False),
        ("*.example.com", "aexample.com", False),
        ("*.Example.com", "a.example.com", True),
        ("*.example.com", "a.example.com.evil", False),
    ],
)
def test_host(host: str, authority: str, expected: bool) -> None:
    assert matcher(host=host).matches(make_head(authority=authority)) is expected


def test_methods() -> None:
    m = matcher(methods=["get", "HEAD"])
    assert m.matches(make_head(method=b"GET"))
    assert m.matches(make_head(method=b"HEAD"))
    assert not m.matches(make_head(method=b"POST"))


@pytest.mark.parametrize(
    ("spec", "headers", "expected"),
    [
        ({"exact": "v2"}, [(b"x-version", b"v2")], True),
        ({"exact": "v2"}, [(b"x-version", b"V2")], False),  # values are case-sensitive
        ({"exact": "v2"}, [], False),
        ({"prefix": "v"}, [(b"x-version", b"v2")], True),
        ({"prefix": "w"}, [(b"x-version", b"v2")], False),
        ({"regex": "v[0-9]"}, [(b"x-version", b"v2")], True),
        ({"regex": "v[0-9]"}, [(b"x-version", b"v22")], False),  # full match
        ({"present": True}, [(b"x-version", b"")], True),  # present even when empty
        ({"present": True}, [], False),
        ({"present": False}, [], True),  # absent
        ({"present": False}, [(b"x-version", b"v2")], False),
        ({"present": False}, [(b"x-other", b"v2")], True),
        # Repeated headers are joined with "," before matching.
        ({"exact": "a,b"}, [(b"x-version", b"a"), (b"x-other", b"z"), (b"x-version", b"b")], True),
        ({"exact": "a"}, [(b"x-version", b"a"), (b"x-version", b"b")], False),
        ({"regex": "a,.*"}, [(b"x-version", b"a"), (b"x-version", b"b")], True),
        # Values are latin-1 text.
        ({"exact": "caf\u00e9"}, [(b"x-version", b"caf\xe9")], True),
    ],
)
def test_headers(spec: dict[str, Any], headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert matcher(headers={"x-version": spec}).matches(make_head(headers=headers)) is expected


def test_header_names_are_case_insensitive_in_config() -> None:
    assert matcher(headers={"X-Version": {"exact": "v2"}}).matches(make_head(headers=[(b"x-version", b"v2")]))


@pytest.mark.parametrize(
    ("spec", "query", "expected"),
    [
        ({"exact": "1"}, b"debug=1", True),
        ({"exact": "1"}, b"debug=10", False),
        ({"exact": "1"}, b"", False),
        ({"exact": "1"}, b"a=2&debug=1&b=3", True),
        ({"exact": "1"}, b"debug=1&debug=2", True),  # first value wins
        ({"exact": "2"}, b"debug=1&debug=2", False),
        ({"exact": "a b"}, b"debug=a%20b", True),  # percent-decoded
        ({"exact": "a b"}, b"debug=a+b", True),  # form encoding
        ({"prefix": "ab"}, b"debug=abc", True),
        ({"prefix": "b"}, b"debug=abc", False),
        ({"regex": "[0-9]+"}, b"debug=123", True),
        ({"regex": "[0-9]+"}, b"debug=123x", False),
        ({"present": True}, b"debug", True),  # blank values are kept
        ({"present": True}, b"debug=", True),
        ({"present": True}, b"x=debug", False),
        ({"present": False}, b"x=1", True),
        ({"present": False}, b"", True),
        ({"present": False}, b"debug=", False),
        ({"exact": "\u00e9"}, b"debug=%C3%A9", True),  # escapes are UTF-8
        ({"exact": "1"}, b"%zz=&debug=1&&=", True),  # garbage around is tolerated
    ],
)
def test_query(spec: dict[str, Any], query: bytes, expected: bool) -> None:
    assert matcher(query={"debug": spec}).matches(make_head(query=query)) is expected


def test_all_conditions_must_hold() -> None:
    m = matcher(
        host="svc",
        prefix="/api",
        methods=["POST"],
        headers={"x-a": {"exact": "1"}},
        query={"q": {"present": True}},
    )
    good: dict[str, Any] = {
        "path": "/api/x",
        "method": b"POST",
        "authority": "svc",
        "headers": [(b"x-a", b"1")],
        "query": b"q=",
    }
    assert m.matches(make_head(**good))
    for key, bad in [
        ("path", "/other"),
        ("method", b"GET"),
        ("authority", "other"),
        ("headers", [(b"x-a", b"2")]),
        ("query", b"r="),
    ]:
        assert not m.matches(make_head(**{**good, key: bad})), key


def test_query_params_parsed_once_and_shared() -> None:
    params = QueryParams(b"a=1&b=2")
    head = make_head(query=b"ignored-when-a-view-is-passed=1")
    assert matcher(query={"a": {"exact": "1"}}).matches(head, params)
    cached = params._params
    assert cached == {"a": "1", "b": "2"}
    assert matcher(query={"b": {"exact": "2"}}).matches(head, params)
    assert params._params is cached


def test_without_query_matchers_the_query_is_never_parsed() -> None:
    params = QueryParams(b"a=1")
    assert matcher(prefix="/").matches(make_head(query=b"a=1"), params)
    assert params._params is None


def test_check_host_false_leaves_host_out() -> None:
    m = RouteMatcher.from_config(RouteMatchConfig(host="a", prefix="/x"), check_host=False)
    assert m.matches(make_head("/x", authority="b"))
    assert not m.matches(make_head("/y", authority="a"))


# --- property: the compiled matcher agrees with a direct reading of the contract -----------------------

_names = st.sampled_from(["x-a", "x-b"])
_values = st.text(alphabet="ab,1", max_size=3)
_value_specs = st.one_of(
    st.builds(lambda v: {"exact": v}, _values),
    st.builds(lambda v: {"prefix": v}, _values),
    st.builds(lambda v: {"regex": re.escape(v) + ".*"}, _values),
    st.builds(lambda v: {"present": v}, st.booleans()),
)


def _reference_value(spec: dict[str, Any], value: str | None) -> bool:
    if "present" in spec:
        return (value is not None) == spec["present"]
    if value is None:
        return False
    if "exact" in spec:
        return bool(value == spec["exact"])
    if "prefix" in spec:
        return value.startswith(spec["prefix"])
    return re.fullmatch(spec["regex"], value) is not None


@given(
    spec_h=st.dictionaries(_names, _value_specs, max_size=2),
    spec_q=st.dictionaries(_names, _value_specs, max_size=2),
    headers=st.lists(st.tuples(_names, _values), max_size=4),
    params=st.lists(st.tuples(_names, _values), max_size=4),
)
def test_headers_and_query_agree_with_reference(
    spec_h: dict[str, dict[str, Any]],
    spec_q: dict[str, dict[str, Any]],
    headers: list[tuple[str, str]],
    params: list[tuple[str, str]],
) -> None:
    head = make_head(
        headers=[(k.encode(), v.encode()) for k, v in headers],
        query="&".join(f"{k}={quote(v)}" for k, v in params).encode(),
    )
    expected = True
    for name, spec in spec_h.items():
        values = [v for k, v in headers if k == name]
        expected &= _reference_value(spec, ",".join(values) if values else None)
    for name, spec in spec_q.items():
        first = next((v for k, v in params if k == name), None)
        expected &= _reference_value(spec, first)
    assert matcher(headers=spec_h, query=spec_q).matches(head) is expected


@given(raw=st.one_of(
    st.binary(max_size=30),
    st.lists(st.sampled_from(["a", "b", "=", "&", "+", "%", "%2", "%41", "%C3%A9", "%ff", "\u00e9", ";"]),
             max_size=12).map(lambda parts: "".join(parts).encode("latin-1")),
))
def test_query_parse_is_parse_qsl_first_value_wins(raw: bytes) -> None:
    expected: dict[str, str] = {}
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="replace"):
        expected.setdefault(name, value)
    assert QueryParams._parse(raw) == expected


@given(path=st.text(max_size=20), query=st.binary(max_size=20), value=st.binary(max_size=10))
def test_garbage_never_raises(path: str, query: bytes, value: bytes) -> None:
    m = matcher(regex="/a.*", headers={"x-a": {"regex": ".*"}}, query={"q": {"prefix": ""}})
    m.matches(make_head(path, query=query, headers=[(b"x-a", value)]))


@pytest.mark.parametrize(("spec", "identity", "expected"), [
    ({"exact": "spiffe://cluster.local/ns/a/sa/web"}, "spiffe://cluster.local/ns/a/sa/web", True),
    ({"exact": "spiffe://cluster.local/ns/a/sa/web"}, "spiffe://cluster.local/ns/a/sa/web2", False),
    ({"prefix": "spiffe://cluster.local/ns/a/"}, "spiffe://cluster.local/ns/a/sa/web", True),
    ({"prefix": "spiffe://cluster.local/ns/a/"}, "spiffe://cluster.local/ns/b/sa/web", False),
    ({"regex": "spiffe://cluster.local/ns/[a-c]/sa/.*"}, "spiffe://cluster.local/ns/b/sa/x", True),
    ({"regex": "spiffe://cluster.local/ns/[a-c]/sa/.*"}, "xspiffe://cluster.local/ns/b/sa/x", False),  # anchored
    ({"present": True}, "spiffe://cluster.local/ns/a/sa/web", True),
    ({"present": True}, "", False),
    ({"present": False}, "", True),
    ({"present": False}, "spiffe://cluster.local/ns/a/sa/web", False),
    ({"prefix": "spiffe://"}, "", False),  # no identity: only `present: false` matches
])
def test_peer_identity(spec: dict[str, Any], identity: str, expected: bool) -> None:
    m = matcher(prefix="/", peer_identity=spec)
    assert m.matches(make_head("/x"), None, identity) is expected


def test_without_a_peer_identity_condition_any_caller_matches() -> None:
    m = matcher(prefix="/")
    assert m.matches(make_head("/x"), None, "spiffe://cluster.local/ns/a/sa/web")
    assert m.matches(make_head("/x"))
