"""What makes an HTTP/2 field section well-formed (RFC 9113 sections 8.2 and 8.3), checked as it arrives.

Owns `request_problem`, `response_problem` and `trailers_problem`: each returns what is wrong with a decoded
field section (None when nothing is). A malformed request or response is a stream error (the engine resets
the stream with PROTOCOL_ERROR); nothing malformed reaches a codec. Checked: names are lowercase tokens and
values carry no CR, LF, NUL or surrounding whitespace; pseudo-header fields are known, not repeated and
before every regular field (none in trailers); the connection-specific fields of HTTP/1.1 are absent, `te`
is at most `trailers`; a request has `:method`, and `:scheme` and a non-empty `:path` unless it is CONNECT
(which has `:authority` and neither); a response has one three-digit `:status`; `content-length` values are
digits and agree. Must not do I/O or know streams. Compiled with mypyc.
"""

from __future__ import annotations

from proxy.message import Headers

# bytes.translate(None, _TOKEN) deletes every byte a lowercase field name may hold: anything left is wrong.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
# ... and every byte a field value may hold (visible ASCII, SP, HTAB, obs-text).
_VALUE = bytes([9]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
# A method is a token (RFC 9110 section 9.1: case-sensitive, so upper case too).
_METHOD = _TOKEN + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Visible ASCII: what a path, an authority and a scheme are made of.
_VISIBLE = bytes(range(0x21, 0x7F))
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})


def _regular_problem(name: bytes, value: bytes) -> str | None:
    if not name or name.translate(None, _TOKEN):
        return f"field name {name[:40]!r} is not a lowercase token"
    if value.translate(None, _VALUE):
        return f"field {name.decode('latin-1')} has a forbidden byte in its value"
    if value and (value[0] in (9, 32) or value[-1] in (9, 32)):
        return f"field {name.decode('latin-1')} value has surrounding whitespace"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific field {name.decode('latin-1')}"
    if name == b"te" and value != b"trailers":
        return "te other than trailers"
    return None


def _regular_field(name: bytes, value: bytes, length: int) -> tuple[str | None, int]:
    """A regular field of a request or response: what is wrong with it, and the declared content-length so far
    (`length`, updated when this field is one)."""
    problem = _regular_problem(name, value)
    if problem is not None:
        return problem, -1
    if name == b"content-length":
        length = _content_length(value, length)
        if length == -2:
            return "content-length is not one number", -1
    return None, length


def _content_length(value: bytes, seen: int) -> int:
    """The declared length (-2 when the value is not digits or differs from one seen before)."""
    if not value.isdigit() or len(value) > 18:
        return -2
    length = int(value)
    return length if seen < 0 or seen == length else -2


def _pseudo_problem(name: bytes, value: bytes, regular: bool, seen: set[bytes]) -> str | None:
    if regular or name not in _REQUEST_PSEUDO or name in seen:
        return f"pseudo-header field {name.decode('latin-1')} unknown, repeated or misplaced"
    seen.add(name)
    # What becomes an HTTP/1.1 request line upstream must not be able to split it: a token method, a path
    # of visible ASCII starting with / (or *), an authority and scheme without spaces or controls.
    if name == b":method":
        bad = not value or bool(value.translate(None, _METHOD))
    elif name == b":path":
        bad = not (value[:1] == b"/" or value == b"*") or bool(value.translate(None, _VISIBLE))
    else:
        bad = bool(value.translate(None, _VISIBLE))
    return f"{name.decode('latin-1')} {value[:40]!r} is not well-formed" if bad else None


def request_problem(fields: Headers) -> tuple[str | None, int]:
    """(what is wrong with a request's fields or None, its content-length or -1)."""
    seen: set[bytes] = set()
    regular = False
    length = -1
    method = b""
    for name, value in fields:
        if name[:1] == b":":
            problem = _pseudo_problem(name, value, regular, seen)
            if problem is not None:
                return problem, -1
            if name == b":method":
                method = value
            continue
        regular = True
        problem, length = _regular_field(name, value, length)
        if problem is not None:
            return problem, -1
    if not method:
        return "no :method", -1
    if method == b"CONNECT":
        if b":authority" not in seen or b":scheme" in seen or b":path" in seen:
            return "CONNECT needs :authority and neither :scheme nor :path", -1
        return None, length
    if b":scheme" not in seen or b":path" not in seen:
        return "no :scheme or :path", -1
    return None, length


def response_problem(fields: Headers) -> tuple[str | None, int]:
    """(what is wrong with a response's fields or None, its content-length or -1)."""
    status = 0
    regular = False
    length = -1
    for name, value in fields:
        if name[:1] == b":":
            if regular or name != b":status" or status:
                return f"pseudo-header field {name.decode('latin-1')} unknown, repeated or misplaced", -1
            if len(value) != 3 or not value.isdigit():
                return f":status {value[:20]!r} is not three digits", -1
            status = int(value)
            continue
        regular = True
        problem, length = _regular_field(name, value, length)
        if problem is not None:
            return problem, -1
    return (None, length) if status else ("no :status", -1)


def trailers_problem(fields: Headers) -> str | None:
    for name, value in fields:
        if name[:1] == b":":
            return "pseudo-header field in trailers"
        problem = _regular_problem(name, value)
        if problem is not None:
            return problem
    return None

