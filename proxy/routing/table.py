"""The immutable route table of one listener: which route a request head selects.

Owns route order (the first route whose match holds wins) and the host index that keeps `find` fast with
many virtual hosts: for every exact host named by some route, the ordered candidate list (routes for that
host, routes without a host, and wildcard routes that cover it, config order preserved) is built once;
any other host gets the routes without a host plus the wildcard routes, whose host is checked per request.
Indexed candidates are compiled without their host condition, since the index already decided it.

Must not: be mutated after build (a reload builds a new table and swaps it in one assignment), hold
clusters or runtime stages (a route names its cluster), or touch config models on the hot path (`config`
is kept on `CompiledRoute` for admin dumps and for owners compiling per-route stages once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.config.model import RouteConfig
from proxy.message import RequestHead
from proxy.routing.match import QueryParams, RouteMatcher, host_name
from proxy.routing.split import Split

_MatchFn = Callable[[RequestHead, QueryParams | None, str], bool]
# (needs a shared QueryParams, ((bound matches, route), ...)): one tuple so `find` does a single dict lookup.
_Candidates = tuple[bool, tuple[tuple[_MatchFn, "CompiledRoute"], ...]]


class CompiledRoute:
    """One route, compiled: what the request path needs from it after `find`."""

    __slots__ = ("config", "index", "matcher", "name", "split")

    def __init__(self, config: RouteConfig, index: int) -> None:
        self.name = config.name
        self.index = index  # position in the listener's route list: stable key for per-route stages
        self.config = config
        self.matcher = RouteMatcher.from_config(config.match)
        self.split = Split.from_config(config.cluster, config.split)

    def __repr__(self) -> str:
        return f"CompiledRoute({self.index}, {self.name!r})"


class RouteTable:
    """Ordered routes plus a host index; `find(head)` returns the first route that matches, or None."""

    __slots__ = ("_by_host", "_fallback", "routes")

    routes: tuple[CompiledRoute, ...]

    def __init__(self, routes: Sequence[CompiledRoute]) -> None:
        self.routes = tuple(routes)
        hosts: dict[str, None] = {}  # exact hosts, in first-seen order (dict as an ordered set)
        for route in self.routes:
            host = route.config.match.host
            if host is not None and not host.startswith("*."):
                hosts.setdefault(host_name(host))
        # Matchers without the host condition, shared by every host's list that includes the route.
        hostless = {
            route.index: RouteMatcher.from_config(route.config.match, check_host=False)
            for route in self.routes
        }
        self._by_host: dict[str, _Candidates] = {}
        for host in hosts:
            # The host condition is decided here, at build, for exact, wildcard and host-less routes alike.
            entries = [
                (hostless[route.index], route) for route in self.routes if route.matcher.host_matches(host)
            ]
            self._by_host[host] = _candidates(entries)
        # Unknown hosts: routes without a host or with a wildcard; the full matcher re-checks wildcards.
        self._fallback: _Candidates = _candidates(
            [
                (route.matcher, route)
                for route in self.routes
                if route.config.match.host is None or route.config.match.host.startswith("*.")
            ]
        )

    @classmethod
    def from_config(cls, routes: Sequence[RouteConfig]) -> RouteTable:
        return cls([CompiledRoute(route, index) for index, route in enumerate(routes)])

    def find(self, head: RequestHead, peer_identity: str = "") -> CompiledRoute | None:
        """The first route, in config order, whose match holds for `head` from a caller with `peer_identity`
        (its SPIFFE ID, "" without one); None means "no route" (404)."""
        needs_query, entries = self._by_host.get(head.authority, self._fallback)
        # One lazy view per request, shared by all candidates, so the query is parsed at most once.
        query = QueryParams(head.query) if needs_query else None
        for matches, route in entries:
            if matches(head, query, peer_identity):
                return route
        return None

    def cluster_names(self) -> tuple[str, ...]:
        """Every cluster a route can send to, distinct, in first-seen order (for validation and warm-up)."""
        names: dict[str, None] = {}
        for route in self.routes:
            for name in route.split.names:
                names.setdefault(name)
        return tuple(names)

    def __len__(self) -> int:
        return len(self.routes)


def _candidates(entries: list[tuple[RouteMatcher, CompiledRoute]]) -> _Candidates:
    # Bound methods are made here once, so `find` pays no attribute lookup per candidate.
    return (
        any(matcher.needs_query for matcher, _ in entries),
        tuple((matcher.matches, route) for matcher, route in entries),
    )
