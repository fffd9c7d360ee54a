"""Header rules of an HTTP/1.1 intermediary: hop-by-hop stripping, forwarding headers, request ids,
and the wire bytes of heads and chunked framing.

Owns what a proxy must not forward (RFC 9110 section 7.6.1, as the user contract lists it: Connection and the
headers it names, Keep-Alive, TE other than `te: trailers`, Transfer-Encoding, Upgrade, Proxy-*; the
`Trailer` header that announces trailer fields is forwarded with them), which fields a trailer section
may carry, `x-forwarded-for` / `x-forwarded-proto`, `x-forwarded-client-cert`, `x-request-id`, and the byte
layout of request and response heads and of chunks (the one place chunked framing is written). Must not know
routes or policy.
"""

from __future__ import annotations

import os
import random
from binascii import hexlify
from typing import Final

from proxy.message import HOP_BY_HOP, REASON_PHRASES, Headers, RequestHead, ResponseHead

TE = b"te"
TE_TRAILERS = b"trailers"
# Fields a trailer section must not carry (RFC 9110 section 6.5.1: framing, routing, the hop-by-hop ones):
# dropped from forwarded trailers, both ways.
NOT_IN_TRAILERS: frozenset[bytes] = HOP_BY_HOP | {b"content-length", b"host", b"trailer", b"expect"}

X_REQUEST_ID = b"x-request-id"
X_FORWARDED_FOR = b"x-forwarded-for"
X_FORWARDED_PROTO = b"x-forwarded-proto"
# The caller's verified identity, as an mTLS listener vouches for it (Envoy's XFCC): never taken from a client.
X_FORWARDED_CLIENT_CERT = b"x-forwarded-client-cert"


# Final: compiled, a Final constant is a static read, a plain global a dict lookup per use.
_UUID_CLEAR: Final = ~((0xF << 76) | (0x3 << 62))
_UUID_SET: Final = (0x4 << 76) | (0x2 << 62)


def request_id_from_bits(bits: int) -> bytes:
    """128 random bits -> a UUID4 in canonical text form (version and variant bits set)."""
    # hexlify, byte slices and a join compile to direct C calls (a `%` format stays a generic operator call
    # under mypyc, about twice the cost), and no str is made to be encoded again.
    text = hexlify(((bits & _UUID_CLEAR) | _UUID_SET).to_bytes(16, "big"))
    return b"-".join((text[:8], text[8:12], text[12:16], text[16:20], text[20:]))


def new_request_id(rng: random.Random | None = None) -> bytes:
    """A random UUID4. With `rng` (a per-listener generator seeded from the OS at start) it costs no
    syscall: request ids must be unique, not unguessable, and os.urandom is a syscall per request."""
    bits = rng.getrandbits(128) if rng is not None else int.from_bytes(os.urandom(16), "big")
    return request_id_from_bits(bits)


def stamp_request_id(headers: Headers, rng: random.Random | None = None) -> bytes:
    """The request's id, with exactly one `x-request-id` left in `headers` carrying it: the client's when it
    sent one non-empty value; among repeats, the first non-empty one (the others removed); else a new one."""
    found = b""
    count = 0
    for index in range(len(headers)):
        if headers[index][0] == X_REQUEST_ID:
            count += 1
            if not found:
                found = headers[index][1]
    return _one_request_id(headers, found, count, rng)


def stamp_edge_headers(headers: Headers, peer_ip: bytes, proto: bytes, rng: random.Random | None = None,
                       client_cert: bytes = b"") -> bytes:
    """The edge's one pass over a request's headers: `x-forwarded-for` gets the peer appended,
    `x-forwarded-proto` is kept or set to the listener's scheme, every `x-forwarded-client-cert` the client
    sent is removed and `client_cert` (the connection's own, b"" for none) added, and exactly one
    `x-request-id` is left (as `stamp_request_id`), whose value is returned."""
    forwarded_for = -1
    has_proto = False
    client_certs = False
    found = b""
    count = 0
    # Indexing, not enumerate(): compiled, enumerate builds an (index, item) tuple per header.
    for index in range(len(headers)):
        name = headers[index][0]
        if name == X_REQUEST_ID:
            count += 1
            if not found:
                found = headers[index][1]
        elif name == X_FORWARDED_FOR:
            forwarded_for = index
        elif name == X_FORWARDED_PROTO:
            has_proto = True
        elif name == X_FORWARDED_CLIENT_CERT:
            client_certs = True
    if forwarded_for >= 0:
        headers[forwarded_for] = (X_FORWARDED_FOR, headers[forwarded_for][1] + b", " + peer_ip)
    elif peer_ip:
        headers.append((X_FORWARDED_FOR, peer_ip))
    if not has_proto:
        headers.append((X_FORWARDED_PROTO, proto))
    if client_certs:
        # A client's claim to an identity: never forwarded (CONTRACT: every listener removes it).
        headers[:] = [field for field in headers if field[0] != X_FORWARDED_CLIENT_CERT]
    if client_cert:
        headers.append((X_FORWARDED_CLIENT_CERT, client_cert))
    return _one_request_id(headers, found, count, rng)


def _one_request_id(headers: Headers, found: bytes, count: int, rng: random.Random | None) -> bytes:
    """Given what a scan saw (the first non-empty id, how many `x-request-id` lines), leave exactly one."""
    if count == 1 and found:
        return found
    if count:
        headers[:] = [field for field in headers if field[0] != X_REQUEST_ID]
    if not found:
        found = new_request_id(rng)
    headers.append((X_REQUEST_ID, found))
    return found


# The Connection values nearly every message carries, parsed once (an upstream's keep-alive answer).
_COMMON_CONNECTION: dict[bytes, frozenset[bytes]] = {
    value: frozenset((value.lower(),)) for value in (b"keep-alive", b"Keep-Alive", b"close", b"Close")}


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The lower-cased tokens of every Connection header (names that are hop-by-hop for this message)."""
    values = [value for name, value in headers if name == b"connection"]
    if len(values) == 1:
        common = _COMMON_CONNECTION.get(values[0])
        if common is not None:
            return common
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def forwarded_te(value: bytes) -> bool:
    """Whether a request's `TE` line goes upstream: only `te: trailers` (the client accepts trailers)."""
    return value.strip().lower() == TE_TRAILERS


def trailer_fields(fields: Headers) -> Headers:
    """The trailer fields that may be forwarded (no framing, routing or hop-by-hop ones)."""
    return [(name, value) for name, value in fields if name not in NOT_IN_TRAILERS and name[:6] != b"proxy-"]


def serialize_request(head: RequestHead, extra: tuple[bytes, bytes], framing: bytes) -> bytes:
    """Request line + head.headers + the `extra` header + `framing` (pre-rendered lines: a Content-Length or
    Transfer-Encoding line, upgrade headers, or b"") + CRLF."""
    parts = [head.method, b" ", head.target(), b" HTTP/1.1\r\nhost: ", head.host_header, b"\r\n"]
    for name, value in head.headers:
        # Four appends, not a tuple per header: compiled (mypyc), each is one C call on the list.
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    parts.append(extra[0])
    parts.append(b": ")
    parts.append(extra[1])
    parts.append(b"\r\n")
    parts.append(framing)
    parts.append(b"\r\n")
    return b"".join(parts)


CHUNKED_LINE = b"transfer-encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (an empty `data` would end the body: callers skip it)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    """The end of a chunked body, with its trailer section."""
    if not trailers:
        return LAST_CHUNK
    parts = [b"0\r\n"]
    for name, value in trailers:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


# Built once at import and never mutated: the common status lines cost a dict hit, not a format.
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {
    (status, phrase): b"HTTP/1.1 %d %s\r\n" % (status, phrase) for status, phrase in REASON_PHRASES.items()}


# `content-length: N\r\n` for the small bodies most API answers have, rendered at import (about 60 KB):
# compiled, a `%` format per response is a generic operator call (docs/decisions/0008).
_CONTENT_LENGTH_LINES: tuple[bytes, ...] = tuple(b"content-length: %d\r\n" % n for n in range(1024))


def content_length_line(length: int) -> bytes:
    """The `content-length: N\r\n` header line."""
    if 0 <= length < 1024:
        return _CONTENT_LENGTH_LINES[length]
    return b"content-length: %d\r\n" % length


def status_line(status: int, reason: bytes) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n` for (status, reason); the standard pairs are pre-rendered."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Unknown")
    return line


def serialize_response(head: ResponseHead, extra: bytes = b"", body: bytes = b"") -> bytes:
    """Status line + head.headers + `extra` (pre-rendered header lines) + CRLF, then `body` (bytes already at
    hand, framed by the caller): one buffer, so the head and a small body go out in one write."""
    parts = [status_line(head.status, head.reason)]
    for name, value in head.headers:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    parts.append(extra)
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)
