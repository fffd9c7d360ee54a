"""Protocol-independent request and response heads.

Owns the shapes every stage above the codec sees: a request head (method, target split into path and
query, authority, lower-cased byte headers) and a response head. HTTP/2 plugs in by producing the same
heads. Must not know about sockets, framing or routing.
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]


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


class RequestHead:
    """One request's head. Header names are lower-case bytes; values are raw bytes.

    `path` is the raw path (as received, not percent-decoded) without the query string: what path
    matchers see; `query` the raw query string without `?`; `authority` the Host (or absolute-form
    authority) lower-cased and without its port (what host matchers see); `host_header` the full
    Host value forwarded upstream.

    A plain slotted class, not a dataclass: one is built per request, and mypyc compiles this shape
    into a native class with a C constructor, where `@dataclass(slots=True)` stays an interpreted
    `__init__` (about 4k instructions per request, docs/decisions/0008).
    """

    __slots__ = ("authority", "headers", "host_header", "http_minor", "keep_alive", "method", "path", "query")

    def __init__(self, method: bytes, path: str, query: bytes, authority: str, host_header: bytes,
                 headers: Headers, keep_alive: bool = True, http_minor: int = 1) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.authority = authority
        self.host_header = host_header
        self.headers = headers
        self.keep_alive = keep_alive
        self.http_minor = http_minor

    def _fields(self) -> tuple[object, ...]:
        return (self.method, self.path, self.query, self.authority, self.host_header, self.headers,
                self.keep_alive, self.http_minor)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestHead) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable (headers are rewritten in place), as a dataclass

    def __repr__(self) -> str:
        return (f"RequestHead(method={self.method!r}, path={self.path!r}, query={self.query!r}, "
                f"authority={self.authority!r}, host_header={self.host_header!r}, headers={self.headers!r}, "
                f"keep_alive={self.keep_alive!r}, http_minor={self.http_minor!r})")

    def header(self, name: bytes) -> bytes | None:
        """First value of `name` (lower-case), or None when absent."""
        return first_header(self.headers, name)

    def target(self) -> bytes:
        """The origin-form request target (path and query) as sent upstream."""
        raw = self.path.encode("latin-1")
        if self.query:
            return raw + b"?" + self.query
        return raw


class ResponseHead:
    """One response's head: status, reason and lower-cased byte headers (a plain class: see RequestHead)."""

    __slots__ = ("headers", "http_minor", "keep_alive", "reason", "status")

    def __init__(self, status: int, reason: bytes, headers: Headers, keep_alive: bool = True,
                 http_minor: int = 1) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.http_minor = http_minor

    def _fields(self) -> tuple[object, ...]:
        return (self.status, self.reason, self.headers, self.keep_alive, self.http_minor)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResponseHead) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"ResponseHead(status={self.status!r}, reason={self.reason!r}, headers={self.headers!r}, "
                f"keep_alive={self.keep_alive!r}, http_minor={self.http_minor!r})")
