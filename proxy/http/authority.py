"""The Host header and absolute-form authority: which values are valid, and the name routes match.

Owns the grammar a request's authority must have (RFC 9110 section 7.2: `uri-host [ ":" port ]`, with
RFC 3986's `IP-literal / IPv4address / reg-name` and no userinfo): a reg-name of unreserved characters,
sub-delims and `%XX` escapes, or an IPv6 address in brackets; then at most one port, digits only (RFC 3986
`port = *DIGIT`: it may be empty, and its value is the upstream's business). Anything else (spaces,
`#`, `?`, `/`, `@`, a second or non-numeric port, a bracketed name that is not an IPv6 address) is invalid,
and RFC 9112 section 3.2 says such a request gets 400. The name routes match is lower-case, without port,
brackets or one trailing dot (`example.com.` is the fully-qualified spelling of `example.com`).

Must not: decide what an invalid value gets (the codec answers), change the Host forwarded upstream, or
raise on any input.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

# What each byte is in a Host value: a reg-name character (unreserved or sub-delims), an upper-case letter
# (also one, lower-cased for routes), the `:` before the port, the `%` of an escape; 0 = none of these.
_NAME: Final = 1
_UPPER: Final = 2
_COLON: Final = 3
_ESCAPE: Final = 4
_KINDS: Final = bytes(
    _UPPER if 65 <= b <= 90
    else _NAME if chr(b) in "abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;="
    else _COLON if b == 58
    else _ESCAPE if b == 37
    else 0
    for b in range(256))
_ESCAPES: Final = re.compile(rb"(?:[^%]|%[0-9A-Fa-f]{2})*")
_IPV6: Final = b"0123456789ABCDEFabcdef:."
_BRACKET: Final = 91  # ord("[")
_DOT: Final = 46  # ord(".")


def route_authority(value: bytes) -> str | None:
    """The name host matchers compare for a Host value (lower-case, no port, no trailing dot), or None
    when the value is not a valid authority. An empty value is valid and names no host."""
    size = len(value)
    if not size:
        return ""
    if value[0] == _BRACKET:
        return _ip_literal(value)
    # One pass over the bytes with a table, compiled to a C loop (mypyc): cheaper than the partition,
    # translate and membership tests it replaces (about 1 k instructions for `name:port`, callgrind).
    kinds = _KINDS
    end = size  # where the name ends: at the first `:`
    upper = False
    escaped = False
    for index in range(size):
        kind = kinds[value[index]]
        if kind == _NAME:
            continue
        if kind == _UPPER:
            upper = True
        elif kind == _COLON:
            end = index
            break
        elif kind == _ESCAPE:
            escaped = True
        else:
            return None  # a byte a reg-name cannot hold: space, `#`, `?`, `/`, `@`, `[`, ...
    if end == 0:
        return None  # a port without a host (`:80`)
    if end < size and not _port_after(value, end + 1):
        return None
    name = value[:end] if end < size else value
    if escaped and _ESCAPES.fullmatch(name) is None:
        return None  # a `%` that starts no escape
    if name[-1] == _DOT:
        name = name[:-1]
    text = name.decode("ascii")
    return text.lower() if upper else text


def _port_after(value: bytes, start: int) -> bool:
    """Whether `value` from `start` (just past the name's `:`) on is a port: digits only (an empty port is
    one), at most 65535."""
    size = len(value)
    for index in range(start, size):
        digit = value[index]
        if digit < 48 or digit > 57:
            return False  # a second or a non-numeric port
    # Four digits or fewer are always in range (at most 9999): only a longer port is read as a number.
    return size - start <= 4 or _port_in_range(value[start:])


def _ip_literal(value: bytes) -> str | None:
    """`[IPv6]` or `[IPv6]:port` -> the address, lower-case; None when it is not that."""
    end = value.find(b"]")
    if end < 0:
        return None  # checked before slicing: compiled, `value[1:-1]` of b"[" is a SystemError, not b""
    literal = value[1:end]
    rest = value[end + 1:]
    if not literal or (rest and (rest[:1] != b":" or not (rest[1:].isdigit() or rest == b":"))):
        return None
    if len(rest) > 5 and not _port_in_range(rest[1:]):
        return None
    # Only hex digits, `:` and `.`: ipaddress would also take a zone (`%eth0`), which a Host cannot carry.
    if literal.translate(None, _IPV6):
        return None
    text = literal.decode("ascii").lower()
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return text


def _port_in_range(digits: bytes) -> bool:
    """Digits that a TCP port can be (leading zeros allowed, as RFC 3986 allows them): at most 65535."""
    stripped = digits.lstrip(b"0")
    return len(stripped) <= 5 and (not stripped or int(stripped) <= 65535)
