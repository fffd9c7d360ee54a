"""Protocol-independent request and response heads.

Owns the shapes every stage above the codec sees: a request head (method, target split into path and
query, authority, lower-cased byte headers) and a response head, and the one table of reason phrases
(`reason_phrase`) that every response the sidecar writes or forwards carries, and the one set of
hop-by-hop header names (`HOP_BY_HOP`: connection-specific in HTTP/1.1, forbidden in HTTP/2), which the
codecs strip and header rules may not touch. HTTP/2 plugs in by producing the same heads. Must not know
about sockets, framing or routing.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar

Headers = list[tuple[bytes, bytes]]

# Connection-specific fields a proxy must not forward (RFC 9110 section 7.6.1). `te` is one too, except
# `te: trailers` on a request; names starting with `proxy-` are dropped as well (callers test the prefix).
HOP_BY_HOP: frozenset[bytes] = frozenset(
    (b"connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade",
     b"proxy-connection", b"proxy-authenticate", b"proxy-authorization"))


def first_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of `name` (lower-case) in a header list, or None when absent."""
    for key, value in headers:
        if key == name:
            return value
    return None


def authority_of(host: str) -> str:
    """A Host value -> lower-case name without port, IPv6 brackets removed: what host matchers compare."""
    text = host.lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    name, _, _ = text.partition(":")
    return name


class Record:
    """Value equality and a dataclass-style repr for the plain slotted records built per request.

    Subclasses name their fields, in constructor order, in `FIELDS`. Plain classes rather than dataclasses:
    mypyc compiles them into native classes with C constructors, where a dataclass keeps an interpreted
    `__init__` (about 4k instructions per request for the two heads; docs/decisions/0008). Equality and repr
    are for tests and logs, never the request path.
    """

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented  # the other side may know how to compare (mock.ANY does)
        return all(getattr(self, name) == getattr(other, name) for name in self.FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable (headers are rewritten in place), like a dataclass

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({fields})"


class RequestHead(Record):
    """One request's head. Header names are lower-case bytes; values are raw bytes.

    `path` is the path without the query string or fragment, as the listener's `http.path_normalization`
    left it (proxy.http.path; still percent-encoded): what path matchers see and what goes upstream;
    `query` the raw query string without `?`; `authority` the Host (or absolute-form authority)
    lower-cased, without its port or a trailing dot (what host matchers see); `host_header` the full Host
    value forwarded upstream.
    """

    __slots__ = ("authority", "headers", "host_header", "method", "path", "query")
    FIELDS = ("method", "path", "query", "authority", "host_header", "headers")

    def __init__(self, method: bytes, path: str, query: bytes, authority: str, host_header: bytes,
                 headers: Headers) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.authority = authority
        self.host_header = host_header
        self.headers = headers

    def header(self, name: bytes) -> bytes | None:
        """First value of `name` (lower-case), or None when absent."""
        return first_header(self.headers, name)

    def target(self) -> bytes:
        """The origin-form request target (path and query) as sent upstream."""
        raw = self.path.encode("latin-1")
        if self.query:
            return raw + b"?" + self.query
        return raw


def _reason_phrases() -> dict[int, bytes]:
    phrases = {status.value: status.phrase.encode() for status in HTTPStatus}
    # RFC 9110's name; Python before 3.13 still says "Request Entity Too Large" (RFC 7231's).
    phrases[413] = b"Content Too Large"
    return phrases


# Built once at import and never mutated: status -> standard reason phrase. An upstream's own phrase is not
# forwarded (phrases are advisory in HTTP/1.1 and absent in HTTP/2); the standard one is sent instead.
REASON_PHRASES: dict[int, bytes] = _reason_phrases()


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase for `status`; b"" for a status without one (a phrase may be empty)."""
    return REASON_PHRASES.get(status, b"")


class ResponseHead(Record):
    """One response's head: status, reason and lower-cased byte headers."""

    __slots__ = ("headers", "reason", "status")
    FIELDS = ("status", "reason", "headers")

    def __init__(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers


def is_grpc(content_type: bytes | None) -> bool:
    """`application/grpc` itself or one of its `+proto`, `+json`, ... forms (parameters allowed)."""
    if content_type is None or not content_type[:16].lower().startswith(b"application/grpc"):
        return False
    rest = content_type[16:17]
    return rest in (b"", b"+", b";")
