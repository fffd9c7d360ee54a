"""Compiled route matchers: a `RouteMatchConfig` from the config becomes a `RouteMatcher` once, at table build.

Owns the meaning of every match condition (the user contract, "Semantics users rely on"):
- path `exact` / `prefix` / `regex` see the path as the listener normalized it (`http.path_normalization`;
  the codec did it, see proxy.http.path), without the query; `regex` must match the whole path;
- every `regex` is RE2 (proxy.routing.regex): linear time, so no pattern can stall a worker;
- `host` is an exact name or a leading `*.` wildcard (any subdomain, never the bare domain), compared
  case-insensitively with `RequestHead.authority` (the codec already lower-cased it and dropped the port);
  a trailing dot on either side is ignored (`example.com.` is the fully-qualified `example.com`);
- `methods` lists the methods that match (HTTP methods are case-sensitive; the config upper-cases them);
- `headers` / `query` map a name to a value matcher; `{present: false}` means absent; repeated headers are
  joined with "," before matching (as Envoy does); for query parameters the first value wins;
- `peer_identity` is a value matcher on the caller's SPIFFE ID, which a TLS listener read from the client
  certificate once per connection (absent, for `{present: false}`, when the caller has none);
- all conditions of one match must hold.

Must not: allocate per request beyond what a condition needs (no query parsing unless a route has query
matchers, and then once per request through `QueryParams`), import runtime stages, or raise on any input:
garbage in a request means "no match", never an exception.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus

from proxy.config.model import RouteMatchConfig, StringMatcherConfig
from proxy.message import RequestHead
from proxy.routing.regex import Regex

# Value matcher kinds: small int compares are cheaper on the hot path than isinstance dispatch.
_EXACT: Final = 1
_PREFIX: Final = 2
_REGEX: Final = 3
_PRESENT: Final = 4
_ABSENT: Final = 5

# Path matcher kinds (0 = any path).
_PATH_ANY: Final = 0
_PATH_EXACT: Final = 1
_PATH_PREFIX: Final = 2
_PATH_REGEX: Final = 3


def host_name(host: str) -> str:
    """A `match.host` as requests' authorities are compared with it: lower-case, without a trailing dot
    (the codec drops a request's too: `example.com.` is the fully-qualified `example.com`)."""
    return host.lower().removesuffix(".")


class ValueMatcher:
    """One compiled `StringMatcherConfig`: tests a header value or query parameter (None = absent)."""

    __slots__ = ("_kind", "_pattern", "_text")

    def __init__(self, kind: int, text: str = "", pattern: Regex | None = None) -> None:
        self._kind = kind
        self._text = text
        self._pattern = pattern

    @classmethod
    def from_config(cls, matcher: StringMatcherConfig) -> ValueMatcher:
        if matcher.exact is not None:
            return cls(_EXACT, matcher.exact)
        if matcher.prefix is not None:
            return cls(_PREFIX, matcher.prefix)
        if matcher.regex is not None:
            return cls(_REGEX, matcher.regex, Regex(matcher.regex))
        # The model guarantees exactly one kind is given, so here `present` is set.
        return cls(_PRESENT if matcher.present else _ABSENT)

    def matches(self, value: str | None) -> bool:
        kind = self._kind
        if kind == _ABSENT:
            return value is None
        if value is None:
            return False
        if kind == _EXACT:
            return value == self._text
        if kind == _PREFIX:
            return value.startswith(self._text)
        if kind == _REGEX:
            # fullmatch: regexes are anchored at both ends (Envoy's safe_regex meaning).
            assert self._pattern is not None
            return self._pattern.fullmatch(value)
        return True  # _PRESENT


class QueryParams:
    """The query parameters of one request, parsed on first use and then cached.

    One instance is made per request only when some candidate route has query matchers, and shared by
    all of them, so the query string is parsed at most once per request.
    """

    __slots__ = ("_params", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._params: dict[str, str] | None = None

    def get(self, name: str) -> str | None:
        params = self._params
        if params is None:
            params = self._params = self._parse(self._raw)
        return params.get(name)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, str]:
        """Exactly `parse_qsl(text, keep_blank_values=True, errors="replace")` with the first value of each
        name kept (a property test holds it to that), about 4x faster: the common piece has no escape, so
        it skips `unquote_plus`, and later duplicates are not decoded at all."""
        params: dict[str, str] = {}
        if not raw:
            return params
        # latin-1 maps every byte to one code point, so decoding never fails; percent-escapes are then
        # decoded as UTF-8 (with replacement: a bad escape is a non-match, not an error). '+' is a space,
        # the form-encoding meaning every framework gives query strings.
        for piece in raw.decode("latin-1").split("&"):
            if not piece:
                continue
            name, _, value = piece.partition("=")
            if "%" in name or "+" in name:
                name = unquote_plus(name, errors="replace")
            if name in params:
                continue  # first value wins: a later duplicate must not override what the first one said
            if "%" in value or "+" in value:
                value = unquote_plus(value, errors="replace")
            params[name] = value
        return params


class RouteMatcher:
    """All conditions of one `RouteMatchConfig`, compiled; `matches(head)` holds when every condition does."""

    __slots__ = (
        "_headers",
        "_host",
        "_methods",
        "_path",
        "_path_kind",
        "_path_regex",
        "_peer",
        "_query",
        "_wildcard",
    )

    def __init__(
        self,
        *,
        host: str | None = None,
        wildcard: bool = False,
        path_kind: int = _PATH_ANY,
        path: str = "",
        methods: frozenset[bytes] | None = None,
        headers: tuple[tuple[bytes, ValueMatcher], ...] = (),
        query: tuple[tuple[str, ValueMatcher], ...] = (),
    ) -> None:
        self._host = host
        self._wildcard = wildcard
        self._path_kind = path_kind
        self._path = path
        self._path_regex = Regex(path) if path_kind == _PATH_REGEX else None
        self._methods = methods
        # Empty tuples become None so the hot path tests one attribute for "nothing to check".
        self._headers = headers or None
        self._query = query or None
        # The caller identity condition (set by from_config; None: any caller, with an identity or without).
        self._peer: ValueMatcher | None = None

    @classmethod
    def from_config(cls, match: RouteMatchConfig, *, check_host: bool = True) -> RouteMatcher:
        """Compile `match`. With `check_host=False` the host condition is left out: the route table uses
        that for candidate lists it already selected by host, so the check is not paid twice."""
        host: str | None = None
        wildcard = False
        if check_host and match.host is not None:
            name = host_name(match.host)
            if name.startswith("*."):
                # Keep the leading dot: "a.example.com".endswith(".example.com") but "example.com" does not.
                host, wildcard = name[1:], True
            else:
                host = name
        if match.exact is not None:
            path_kind, path = _PATH_EXACT, match.exact
        elif match.prefix is not None:
            path_kind, path = _PATH_PREFIX, match.prefix
        elif match.regex is not None:
            path_kind, path = _PATH_REGEX, match.regex
        else:
            path_kind, path = _PATH_ANY, ""
        methods = (
            frozenset(m.encode("ascii") for m in match.methods) if match.methods is not None else None
        )
        headers = tuple(
            (name.lower().encode("latin-1"), ValueMatcher.from_config(m)) for name, m in match.headers.items()
        )
        query = tuple((name, ValueMatcher.from_config(m)) for name, m in match.query.items())
        matcher = cls(
            host=host,
            wildcard=wildcard,
            path_kind=path_kind,
            path=path,
            methods=methods,
            headers=headers,
            query=query,
        )
        if match.peer_identity is not None:
            matcher._peer = ValueMatcher.from_config(match.peer_identity)
        return matcher

    @property
    def needs_query(self) -> bool:
        """True when this matcher reads query parameters (the table then shares one `QueryParams`)."""
        return self._query is not None

    def host_matches(self, authority: str) -> bool:
        """The host condition alone (True when there is none)."""
        host = self._host
        if host is None:
            return True
        if self._wildcard:
            # len check: ".example.com" itself (an empty label) is not a subdomain.
            return authority.endswith(host) and len(authority) > len(host)
        return authority == host

    def matches(self, head: RequestHead, query: QueryParams | None = None, peer_identity: str = "") -> bool:
        """True when every condition holds. `query` is the request's shared lazy query view; when None and
        this route has query matchers, one is made here (correct, but parses again for each such route).
        `peer_identity` is the caller's SPIFFE ID ("" without one)."""
        # Cheapest and most selective checks first; each is skipped by one attribute test when absent.
        methods = self._methods
        if methods is not None and head.method not in methods:
            return False
        if self._host is not None and not self.host_matches(head.authority):
            return False
        # The path test stays inline: nearly every route has one, so a call for it would cost every route.
        kind = self._path_kind
        if kind:
            if kind == _PATH_PREFIX:
                if not head.path.startswith(self._path):
                    return False
            elif kind == _PATH_EXACT:
                if head.path != self._path:
                    return False
            else:
                assert self._path_regex is not None
                if not self._path_regex.fullmatch(head.path):
                    return False
        if self._headers is not None and not _headers_match(head, self._headers):
            return False
        if self._peer is not None and not self._peer.matches(peer_identity or None):
            return False
        return self._query is None or _query_matches(head, self._query, query)


def _headers_match(head: RequestHead, headers: tuple[tuple[bytes, ValueMatcher], ...]) -> bool:
    """The header conditions of `RouteMatcher.matches`."""
    # mypyc compiles all() over a generator expression to a plain loop: no generator object per call.
    return all(matcher.matches(_header_value(head, name)) for name, matcher in headers)


def _query_matches(head: RequestHead, params: tuple[tuple[str, ValueMatcher], ...], query: QueryParams | None) -> bool:
    """The query conditions of `RouteMatcher.matches`, read through the request's shared `query` view (made
    here when there is none)."""
    if query is None:
        query = QueryParams(head.query)
    return all(matcher.matches(query.get(param)) for param, matcher in params)


def _header_value(head: RequestHead, name: bytes) -> str | None:
    """All values of `name` joined with "," (Envoy's rule for repeats), as latin-1 text; None if absent.

    latin-1 maps bytes to code points one to one, so no value can fail to decode.
    """
    found: bytes | None = None
    for key, value in head.headers:
        if key == name:
            found = value if found is None else found + b"," + value
    return None if found is None else found.decode("latin-1")
