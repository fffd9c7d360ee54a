"""proxy/message.py: heads compare by value and print like the dataclasses they replaced; authority_of
normalises what host matchers see."""

from __future__ import annotations

from unittest import mock

import pytest

from proxy.filters.trace import TraceContext
from proxy.message import RequestHead, ResponseHead, authority_of, first_header, reason_phrase


def head(**changes: object) -> RequestHead:
    fields: dict[str, object] = {"method": b"GET", "path": "/a", "query": b"", "authority": "svc",
                                 "host_header": b"svc", "headers": [(b"accept", b"*/*")]}
    fields.update(changes)
    return RequestHead(**fields)  # type: ignore[arg-type]


def test_records_are_equal_by_value_and_type_and_unhashable() -> None:
    assert head() == head()
    assert head() != head(path="/b")
    assert head() != head(authority="other")
    assert ResponseHead(200, b"OK", []) == ResponseHead(200, b"OK", [])
    assert ResponseHead(200, b"OK", []) != ResponseHead(200, b"OK", [(b"x", b"y")])
    assert TraceContext(b"t", None, True, None, "w3c") != TraceContext(b"t", None, False, None, "w3c")
    assert head() != ("GET", "/a")  # another type is never equal
    assert head() == mock.ANY  # but may decide for itself
    with pytest.raises(TypeError):
        hash(head())  # mutable: headers are rewritten in place


def test_records_print_their_fields_in_constructor_order() -> None:
    assert repr(ResponseHead(204, b"No Content", [])) == (
        "ResponseHead(status=204, reason=b'No Content', headers=[])")
    assert repr(head()).startswith("RequestHead(method=b'GET', path='/a', query=b'', authority='svc', ")


def test_header_and_target() -> None:
    request = head(query=b"x=1", headers=[(b"a", b"1"), (b"a", b"2")])
    assert request.header(b"a") == b"1" and first_header(request.headers, b"b") is None
    assert request.target() == b"/a?x=1" and head().target() == b"/a"


@pytest.mark.parametrize(("host", "authority"), [
    ("Example.COM:8080", "example.com"), ("[::1]:15001", "::1"), ("svc", "svc"), ("[bad", "[bad")])
def test_authority_of(host: str, authority: str) -> None:
    assert authority_of(host) == authority


def test_reason_phrases_are_the_standard_ones_with_rfc_9110_names() -> None:
    assert reason_phrase(200) == b"OK"
    assert reason_phrase(503) == b"Service Unavailable"
    assert reason_phrase(413) == b"Content Too Large"  # RFC 9110, whatever the Python version calls it
    assert reason_phrase(599) == b""  # no standard phrase: the phrase may be empty
