"""proxy/http/headers.py: request ids are canonical UUID4s and exactly one is stamped; forwarding headers;
Connection tokens are parsed the same on the cached common values as in general; a request head
serializes to the bytes an upstream expects."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.headers import (
    connection_tokens,
    content_length_line,
    new_request_id,
    request_id_from_bits,
    serialize_request,
    stamp_edge_headers,
    stamp_request_id,
)
from proxy.message import RequestHead


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_request_id_is_the_canonical_uuid4_of_its_bits(bits: int) -> None:
    text = request_id_from_bits(bits).decode()
    parsed = uuid.UUID(text)
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert str(parsed) == text  # canonical form: lower-case hex, 8-4-4-4-12
    # Only the version and variant bits differ from the random bits.
    mask = ~((0xF << 76) | (0x3 << 62)) & (2**128 - 1)
    assert parsed.int & mask == bits & mask


def test_request_ids_from_a_seeded_generator_differ() -> None:
    rng = random.Random(7)
    ids = {new_request_id(rng) for _ in range(1000)}
    assert len(ids) == 1000
    assert len(new_request_id()) == 36  # from os.urandom when no generator is given


@pytest.mark.parametrize("value", [b"keep-alive", b"Keep-Alive", b"close", b"Close"])
def test_common_connection_values_give_the_same_tokens_as_the_general_parse(value: bytes) -> None:
    cached = connection_tokens([(b"content-type", b"text/plain"), (b"connection", value)])
    general = connection_tokens([(b"connection", value + b", ")])  # not a cached value: parsed
    assert cached == general == frozenset((value.lower(),))


@pytest.mark.parametrize(("headers", "tokens"), [
    ([], frozenset()),
    ([(b"connection", b"keep-alive, X-Trace")], frozenset({b"keep-alive", b"x-trace"})),
    ([(b"connection", b"close"), (b"connection", b"x-a")], frozenset({b"close", b"x-a"})),
    ([(b"connection", b" ,, ")], frozenset()),
])
def test_connection_tokens_of_every_connection_line(headers: list[tuple[bytes, bytes]],
                                                   tokens: frozenset[bytes]) -> None:
    assert connection_tokens(headers) == tokens


def test_serialize_request_writes_line_host_headers_framing_and_blank_line() -> None:
    head = RequestHead(method=b"POST", path="/a%20b", query=b"x=1", authority="svc", host_header=b"svc:8080",
                       headers=[(b"accept", b"*/*"), (b"x-request-id", b"id")])
    assert serialize_request(head, (b"x-sidecar-attempt", b"1"), b"content-length: 3\r\n") == (
        b"POST /a%20b?x=1 HTTP/1.1\r\nhost: svc:8080\r\naccept: */*\r\nx-request-id: id\r\n"
        b"x-sidecar-attempt: 1\r\ncontent-length: 3\r\n\r\n")


@pytest.mark.parametrize("length", [0, 33, 1023, 1024, 10**12])
def test_content_length_line_renders_any_length(length: int) -> None:
    assert content_length_line(length) == f"content-length: {length}\r\n".encode()


@pytest.mark.parametrize(("headers", "kept"), [
    ([(b"x-request-id", b"mine"), (b"accept", b"*/*")], b"mine"),  # one, non-empty: kept in place
    ([(b"x-request-id", b"")], None),  # empty: replaced by a new one
    ([(b"x-request-id", b""), (b"x-request-id", b"second"), (b"x-request-id", b"third")], b"second"),
    ([(b"accept", b"*/*")], None),  # absent: a new one, appended
])
@pytest.mark.parametrize("edge", [False, True])
def test_exactly_one_request_id_is_left_and_returned(headers: list[tuple[bytes, bytes]], kept: bytes | None,
                                                     edge: bool) -> None:
    headers = list(headers)
    before = list(headers)
    if edge:
        request_id = stamp_edge_headers(headers, b"", b"http", random.Random(3))
        headers.remove((b"x-forwarded-proto", b"http"))  # what the edge adds besides the id (no peer here)
    else:
        request_id = stamp_request_id(headers, random.Random(3))
    ids = [value for name, value in headers if name == b"x-request-id"]
    assert ids == [request_id]
    if kept is None:
        assert len(request_id) == 36 and headers[-1] == (b"x-request-id", request_id)
    else:
        assert request_id == kept
    if kept is not None and len([n for n, _ in before if n == b"x-request-id"]) == 1:
        assert headers == before  # nothing moved


def test_the_edge_pass_appends_the_peer_keeps_a_given_proto_and_stamps_one_id() -> None:
    headers = [(b"x-forwarded-for", b"1.1.1.1"), (b"x-request-id", b"r1"), (b"x-forwarded-proto", b"https")]
    assert stamp_edge_headers(headers, b"10.0.0.1", b"http", random.Random(1)) == b"r1"
    assert headers == [(b"x-forwarded-for", b"1.1.1.1, 10.0.0.1"), (b"x-request-id", b"r1"),
                       (b"x-forwarded-proto", b"https")]
    bare: list[tuple[bytes, bytes]] = [(b"x-request-id", b""), (b"x-request-id", b"r2")]
    assert stamp_edge_headers(bare, b"10.0.0.1", b"http", random.Random(1)) == b"r2"
    assert bare == [(b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-proto", b"http"), (b"x-request-id", b"r2")]


def test_the_edge_pass_removes_client_sent_client_certs_and_adds_the_connections_own() -> None:
    forged = [(b"x-forwarded-client-cert", b"By=x;URI=spiffe://cluster.local/ns/a/sa/admin"), (b"a", b"1"),
              (b"x-forwarded-client-cert", b"second")]
    headers = list(forged)
    stamp_edge_headers(headers, b"10.0.0.1", b"https", random.Random(1))
    assert [name for name, _ in headers] == [b"a", b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"]
    headers = list(forged)
    own = b"By=spiffe://cluster.local/ns/a/sa/api;Hash=ab12;URI=spiffe://cluster.local/ns/a/sa/web"
    stamp_edge_headers(headers, b"10.0.0.1", b"https", random.Random(1), own)
    assert [value for name, value in headers if name == b"x-forwarded-client-cert"] == [own]
    assert headers[0] == (b"a", b"1")
