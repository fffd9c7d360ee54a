"""Protocol-independent request and response heads.

Owns the shapes every stage above the codec sees: a request head (method, target split into path and
query, authority, lower-cased byte headers) and a response head. HTTP/2 plugs in by producing the same
heads. Must not know about sockets, framing or routing.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(slots=True)
class RequestHead:
    """One request's head. Header names are lower-case bytes; values are raw bytes.

    `path` is the raw path (as received, not percent-decoded) without the query string: what path
    matchers see; `query` the raw query string without `?`; `authority` the Host (or absolute-form
    authority) lower-cased and without its port (what host matchers see); `host_header` the full
    Host value forwarded upstream.
    """

    method: bytes
    path: str
    query: bytes
    authority: str
    host_header: bytes
    headers: Headers
    keep_alive: bool = True
    http_minor: int = 1

    def header(self, name: bytes) -> bytes | None:
        """First value of `name` (lower-case), or None when absent."""
        return first_header(self.headers, name)

    def target(self) -> bytes:
        """The origin-form request target (path and query) as sent upstream."""
        raw = self.path.encode("latin-1")
        if self.query:
            return raw + b"?" + self.query
        return raw


@dataclass(slots=True)
class ResponseHead:
    """One response's head: status, reason and lower-cased byte headers."""

    status: int
    reason: bytes
    headers: Headers
    keep_alive: bool = True
    http_minor: int = 1
