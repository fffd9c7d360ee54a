"""Route `rewrite`: the path prefix and the Host a request goes upstream with, applied after matching.

Owns what `rewrite.prefix` replaces, which depends on the route's path matcher:
- `prefix` match: the matched prefix is replaced (`/api/v1` -> `/v2` turns `/api/v1/x?q` into `/v2/x?q`);
- `exact` match: the whole path (it is all "matched prefix") is replaced;
- `regex` match: the whole path is replaced (there is no regex_rewrite; a prefix of a regex match is not
  well defined);
- no path matcher: the route matches like `prefix: /` (as Istio compiles it), so the leading `/` is replaced.
The query string is never touched. An empty result becomes `/`.
`rewrite.host` replaces `host_header` (sent upstream as `Host`) and `authority` (its lower-case name
without port, what logs and later stages see).

Must not: re-run routing (the route is already chosen), percent-decode or normalise the path, or touch
any other header.
"""

from __future__ import annotations

import re

from proxy.config.model import RewriteConfig, RouteMatchConfig
from proxy.message import RequestHead, authority_of

_BAD_HOST = re.compile(r"[\s/?#@\x00-\x1f\x7f]")


class Rewriter:
    """One route's compiled `rewrite`; `apply(head)` edits the head in place."""

    __slots__ = ("_authority", "_host_header", "_matched", "_prefix")

    def __init__(self, *, prefix: str | None, matched: str | None, host: str | None) -> None:
        self._prefix = prefix
        # None = replace the whole path; otherwise the prefix the route's matcher guaranteed.
        self._matched = matched
        self._host_header = host.encode("ascii") if host is not None else None
        self._authority = authority_of(host) if host is not None else None

    @classmethod
    def from_config(cls, rewrite: RewriteConfig | None, match: RouteMatchConfig) -> Rewriter | None:
        """None when the route has nothing to rewrite, so it pays nothing per request."""
        if rewrite is None or (rewrite.prefix is None and rewrite.host is None):
            return None
        host = rewrite.host
        if host is not None and (not host or _BAD_HOST.search(host) or not host.isascii()):
            raise ValueError(f"rewrite.host: {host!r} is not a valid host[:port]")
        if rewrite.prefix is not None and not rewrite.prefix.isascii():
            # The path goes upstream latin-1 encoded; a raw path is ASCII (non-ASCII must be percent-encoded).
            raise ValueError(
                f"rewrite.prefix: {rewrite.prefix!r} must be ASCII (percent-encode other characters)")
        matched: str | None
        if match.prefix is not None:
            matched = match.prefix
        elif match.exact is not None or match.regex is not None:
            matched = None
        else:
            matched = "/"
        return cls(prefix=rewrite.prefix, matched=matched, host=rewrite.host)

    def apply(self, head: RequestHead) -> None:
        prefix = self._prefix
        if prefix is not None:
            matched = self._matched
            if matched is None:
                head.path = prefix or "/"
            elif head.path.startswith(matched):
                # Always true after a prefix match; the guard covers e.g. `OPTIONS *` on a match-any route.
                head.path = (prefix + head.path[len(matched):]) or "/"
        if self._host_header is not None:
            head.host_header = self._host_header
            assert self._authority is not None
            head.authority = self._authority
