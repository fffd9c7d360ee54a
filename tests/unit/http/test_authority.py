"""Host / authority validation (proxy.http.authority): the shapes RFC 9110 and RFC 3986 allow, the ones that
get 400, the name routes match, and "garbage in -> None, never an exception"."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.authority import route_authority

VALID = [
    (b"campaign-service", "campaign-service"),
    (b"Campaign-Service:8080", "campaign-service"),
    (b"campaign-service.", "campaign-service"),  # the fully-qualified spelling
    (b"Campaign-Service.:8080", "campaign-service"),
    (b"svc.default.svc.cluster.local", "svc.default.svc.cluster.local"),
    (b"10.0.0.7:8080", "10.0.0.7"),
    (b"[::1]", "::1"),
    (b"[2001:DB8::7]:443", "2001:db8::7"),
    (b"[::ffff:10.0.0.1]", "::ffff:10.0.0.1"),
    (b"svc:", "svc"),  # RFC 3986: the port may be empty
    (b"svc:0080", "svc"),
    (b"under_score~x", "under_score~x"),
    (b"a%41", "a%41"),  # a reg-name may carry escapes (kept as sent)
    (b"", ""),  # an empty Host is valid (RFC 9110 7.2) and names no host
]

INVALID = [
    b"a b", b"a\tb", b"a#b", b"a?b", b"a/b", b"a\\b", b"user@svc", b"svc:http", b"svc:80:81", b"svc:-1",
    b"svc:+80", b"svc: 80", b":80", b"[svc]", b"[::1", b"::1", b"[::1]x", b"[::1]:x", b"[]",
    b"[fe80::1%25eth0]", b"[v1.x]", b"a%4", b"a%zz", b"caf\xc3\xa9", b"a\x00b", b"a,b:1]", b"[", b"[x",
    b"svc:65536", b"svc:99999999999999999999", b"[::1]:65536",
]


@pytest.mark.parametrize(("value", "name"), VALID)
def test_valid_values_give_the_name_routes_match(value: bytes, name: str) -> None:
    assert route_authority(value) == name


@pytest.mark.parametrize("value", INVALID)
def test_invalid_values_are_refused(value: bytes) -> None:
    assert route_authority(value) is None


# A direct reading of the grammar, to hold the implementation to.
_REG_NAME = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


def _reference(value: bytes) -> str | None:
    if not value:
        return ""
    host, port = value, b""
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0:
            return None
        host, rest = value[:end + 1], value[end + 1:]
        if rest and not re.fullmatch(rb":[0-9]*", rest):
            return None
        literal = host[1:-1].decode("latin-1")
        if not re.fullmatch(r"[0-9A-Fa-f:.]+", literal):
            return None
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        return literal.lower()
    if b":" in value:
        host, _, port = value.partition(b":")
        if not re.fullmatch(rb"[0-9]*", port):
            return None
    if not _REG_NAME.fullmatch(host):
        return None
    return host.decode("ascii").lower().removesuffix(".")


_alphabet = st.sampled_from([*b"aZ09-._~!$&'()*+,;=%:[]@/?# \t\x00\xff", *b"fF"])
_values = st.lists(_alphabet, max_size=16).map(bytes)


@given(value=_values | st.binary(max_size=24))
def test_agrees_with_the_grammar_and_never_raises(value: bytes) -> None:
    assert route_authority(value) == _reference(value)
