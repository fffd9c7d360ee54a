"""Header rules: remove -> set -> add, compiled once; refused names and values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.model import HeaderOpsConfig
from proxy.filters.headers import HeaderRewriter


def rewriter(**ops: Any) -> HeaderRewriter:
    compiled = HeaderRewriter.from_config(HeaderOpsConfig.model_validate(ops))
    assert compiled is not None
    return compiled


def test_no_rules_compiles_to_none() -> None:
    assert HeaderRewriter.from_config(None) is None
    assert HeaderRewriter.from_config(HeaderOpsConfig()) is None


def test_remove_drops_every_value() -> None:
    headers = [(b"x-debug", b"1"), (b"accept", b"*/*"), (b"x-debug", b"2")]
    rewriter(remove=["X-Debug"]).apply(headers)
    assert headers == [(b"accept", b"*/*")]


def test_remove_absent_keeps_the_same_list() -> None:
    headers = [(b"accept", b"*/*")]
    before = list(headers)
    rewriter(remove=["x-debug"]).apply(headers)
    assert headers == before


def test_set_replaces_all_values_or_appends() -> None:
    headers = [(b"x-canary", b"false"), (b"accept", b"*/*"), (b"x-canary", b"maybe")]
    rewriter(set={"X-Canary": "true"}).apply(headers)
    assert headers == [(b"accept", b"*/*"), (b"x-canary", b"true")]
    headers = [(b"accept", b"*/*")]
    rewriter(set={"x-canary": "true"}).apply(headers)
    assert headers == [(b"accept", b"*/*"), (b"x-canary", b"true")]


def test_add_appends() -> None:
    headers = [(b"x-tag", b"a")]
    rewriter(add={"x-tag": "b"}).apply(headers)
    assert headers == [(b"x-tag", b"a"), (b"x-tag", b"b")]


def test_order_is_remove_then_set_then_add() -> None:
    headers = [(b"x-a", b"old"), (b"x-b", b"old")]
    rewriter(remove=["x-a", "x-b"], set={"x-a": "set"}, add={"x-a": "added", "x-b": "added"}).apply(headers)
    assert headers == [(b"x-a", b"set"), (b"x-a", b"added"), (b"x-b", b"added")]


def test_apply_edits_in_place() -> None:
    headers = [(b"x-a", b"1")]
    alias = headers
    rewriter(remove=["x-a"], add={"x-b": "2"}).apply(headers)
    assert alias is headers and alias == [(b"x-b", b"2")]


def test_values_are_latin1_bytes() -> None:
    headers: list[tuple[bytes, bytes]] = []
    rewriter(set={"x-a": "caf\u00e9"}).apply(headers)
    assert headers == [(b"x-a", b"caf\xe9")]


@pytest.mark.parametrize("name", ["host", "Host", "content-length", "transfer-encoding", "connection",
                                  "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"])
@pytest.mark.parametrize("op", ["remove", "set", "add"])
def test_reserved_names_are_refused(name: str, op: str) -> None:
    ops: dict[str, Any] = {"remove": [name]} if op == "remove" else {op: {name: "v"}}
    with pytest.raises(ValueError, match=op):
        HeaderRewriter.from_config(HeaderOpsConfig.model_validate(ops))


@pytest.mark.parametrize("name", [":path", "bad name", "", "x\r\ny"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid header name"):
        HeaderRewriter.from_config(HeaderOpsConfig(set={name: "v"}))


@pytest.mark.parametrize("value", ["a\r\nx-evil: 1", "a\nb", "a\x00", "\u2603"])
def test_invalid_values_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="x-a"):
        HeaderRewriter.from_config(HeaderOpsConfig(add={"x-a": value}))


# --- property: what remains after apply -------------------------------------------------------------

_names = st.sampled_from(["x-a", "x-b", "x-c", "x-d"])
_values = st.sampled_from(["1", "2", "three"])


@given(
    headers=st.lists(st.tuples(_names, _values), max_size=8),
    remove=st.lists(_names, max_size=3),
    set_=st.dictionaries(_names, _values, max_size=3),
    add=st.dictionaries(_names, _values, max_size=3),
)
def test_apply_postconditions(
    headers: list[tuple[str, str]], remove: list[str], set_: dict[str, str], add: dict[str, str]
) -> None:
    compiled = HeaderRewriter.from_config(HeaderOpsConfig(remove=remove, set=set_, add=add))
    encoded = [(k.encode(), v.encode()) for k, v in headers]
    if compiled is None:
        assert not (remove or set_ or add)
        return
    compiled.apply(encoded)

    def values(name: str) -> list[bytes]:
        return [v for k, v in encoded if k == name.encode()]

    for name in remove:
        if name not in set_ and name not in add:
            assert values(name) == []
    for name, value in set_.items():
        expected = [value.encode()] + ([add[name].encode()] if name in add else [])
        assert values(name) == expected
    for name, value in add.items():
        if name not in set_:
            kept = [] if name in remove else [v.encode() for k, v in headers if k == name]
            assert values(name) == [*kept, value.encode()]
    # Names no rule mentions keep their values, in order.
    untouched = {n for n, _ in headers} - set(remove) - set(set_) - set(add)
    for name in untouched:
        assert values(name) == [v.encode() for k, v in headers if k == name]
