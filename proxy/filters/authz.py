"""Route `authz`: which callers, by their verified SPIFFE ID, may use a route.

Owns the meaning of `authz.allow_identities` and `authz.deny_identities` and their compiled form:
- an entry is an exact SPIFFE ID (`spiffe://cluster.local/ns/default/sa/web`) or a pattern in which `*`
  stands for one whole path segment (`spiffe://cluster.local/ns/default/sa/*`): it matches any one
  non-empty segment, never part of one, never across a `/`, never the trust domain;
- a caller is let on when its identity matches an allow entry and no deny entry (deny wins);
- a request without a verified identity ("": no mTLS, or no client certificate) matches no allow entry,
  so a route with `authz` refuses it;
- a refusal is 403 `http_request_denied` (`Cause.AUTHZ_DENIED`), and nothing reaches the upstream.
Entries are parsed and checked once per config (`parse_identity_pattern`, which `validate` also runs so
that a bad entry is reported with its file and line): exact IDs go in a set, patterns are split into
segments and grouped by segment count. Per request: one set lookup, and only when that misses and the
route has patterns, one split of the identity; no regex.

The identity is `RequestStream.peer_identity`, which a TLS listener fills from the client certificate's
URI SAN (proxy.stream); this module reads nothing else. Must not do I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from proxy.filters.check import RequestCheck
from proxy.local_reply import Cause, LocalReply, local_reply

if TYPE_CHECKING:
    from proxy.config.model import AuthzConfig
    from proxy.stream import RequestStream
    from proxy.telemetry.record import RequestRecord

SCHEME: Final = "spiffe://"
WILDCARD: Final = "*"
# The SPIFFE ID spec: a trust domain of lower-case letters, digits, dots, dashes and underscores; path
# segments of letters, digits, dots, dashes and underscores, neither "." nor ".."; 2048 bytes at most.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
MAX_ID_LENGTH: Final = 2048


def parse_identity_pattern(text: str) -> tuple[str, ...]:
    """An allow or deny entry -> its segments after `spiffe://` (the trust domain first; `*` for a
    wildcard segment). Raises ValueError saying what is wrong, in the config's terms."""
    if not text.startswith(SCHEME):
        raise ValueError(f"{text!r} is not a SPIFFE ID: it must start with spiffe://")
    if len(text) > MAX_ID_LENGTH:
        raise ValueError(f"a SPIFFE ID is at most {MAX_ID_LENGTH} bytes long (got {len(text)})")
    segments = tuple(text[len(SCHEME):].split("/"))
    domain = segments[0]
    if domain == WILDCARD:
        raise ValueError(f"{text!r}: the trust domain cannot be a wildcard (`*` stands for one path segment)")
    if not _TRUST_DOMAIN.fullmatch(domain):
        raise ValueError(f"{text!r}: bad trust domain {domain!r} (lower-case letters, digits, '.', '-', '_')")
    for segment in segments[1:]:
        if segment == WILDCARD:
            continue
        if not segment:
            raise ValueError(f"{text!r}: empty path segment (no '//' and no trailing '/')")
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            what = "`*` must be a whole segment" if WILDCARD in segment else "letters, digits, '.', '-', '_'"
            raise ValueError(f"{text!r}: bad path segment {segment!r} ({what})")
    return segments


class IdentityRules:
    """A compiled list of identity entries: `matches(identity)` says whether any entry matches it."""

    __slots__ = ("exact", "patterns")

    def __init__(self, entries: Sequence[str]) -> None:
        exact: set[str] = set()
        patterns: dict[int, list[tuple[str, ...]]] = {}
        for entry in entries:
            segments = parse_identity_pattern(entry)
            if WILDCARD in segments:
                patterns.setdefault(len(segments), []).append(segments)
            else:
                exact.add(entry)
        self.exact = frozenset(exact)
        # Segment count -> the patterns with that many segments (the identity's count picks the candidates).
        self.patterns = patterns

    def matches(self, identity: str) -> bool:
        if identity in self.exact:
            return True
        if not self.patterns or not identity.startswith(SCHEME):
            return False
        segments = identity[len(SCHEME):].split("/")
        candidates = self.patterns.get(len(segments))
        if candidates is None:
            return False
        return any(_fits(pattern, segments) for pattern in candidates)


def _fits(pattern: tuple[str, ...], segments: list[str]) -> bool:
    """Does an identity's segments fit a pattern of as many segments? `*` takes any one non-empty segment."""
    for index, want in enumerate(pattern):
        got = segments[index]
        if want == WILDCARD:
            if not got:
                return False
        elif want != got:
            return False
    return True


class AuthzCheck(RequestCheck):
    """A route's `authz`: the caller's verified identity must match `allow` and must not match `deny`."""

    __slots__ = ("allow", "denied", "deny")

    def __init__(self, allow: IdentityRules, deny: IdentityRules | None, route: str) -> None:
        self.allow = allow
        self.deny = deny
        self.denied: LocalReply = local_reply(Cause.AUTHZ_DENIED, f"route {route}: peer identity not allowed")

    @classmethod
    def from_config(cls, config: AuthzConfig | None, route: str) -> AuthzCheck | None:
        """The route's check, or None for a route without `authz`. Raises ValueError for a bad entry."""
        if config is None:
            return None
        deny = IdentityRules(config.deny_identities) if config.deny_identities else None
        return cls(IdentityRules(config.allow_identities), deny, route)

    def allows(self, identity: str) -> bool:
        """The rule: an identity (never "") in `allow` and not in `deny`."""
        if not identity:
            return False
        deny = self.deny
        if deny is not None and deny.matches(identity):
            return False
        return self.allow.matches(identity)

    def check(self, stream: RequestStream, record: RequestRecord) -> LocalReply | None:
        if self.allows(stream.peer_identity):
            return None
        return self.denied
