"""Route table: first match wins, the host index agrees with a linear scan, cluster names."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.model import RouteConfig, RouteMatchConfig
from proxy.message import RequestHead
from proxy.routing.table import CompiledRoute, RouteTable
from tests.unit.heads import make_head


def route(name: str, cluster: str = "c", **match: Any) -> RouteConfig:
    return RouteConfig(name=name, cluster=cluster, match=RouteMatchConfig.model_validate(match))


def found(table: RouteTable, head: RequestHead) -> str | None:
    hit = table.find(head)
    return None if hit is None else hit.name


def test_empty_table_finds_nothing() -> None:
    assert RouteTable.from_config([]).find(make_head()) is None


def test_first_match_wins_in_config_order() -> None:
    table = RouteTable.from_config([
        route("by-header", host="svc", prefix="/api", headers={"x-version": {"exact": "v2"}}),
        route("api", host="svc", prefix="/api"),
        route("any-host-api", prefix="/api"),
        route("wild", host="*.svc"),
        route("other-host", host="other"),
        route("catch-all", prefix="/"),
    ])
    assert found(table, make_head("/api/x", authority="svc", headers=[(b"x-version", b"v2")])) == "by-header"
    assert found(table, make_head("/api/x", authority="svc")) == "api"
    assert found(table, make_head("/web", authority="svc")) == "catch-all"
    assert found(table, make_head("/api/x", authority="other")) == "any-host-api"
    assert found(table, make_head("/web", authority="other")) == "other-host"
    assert found(table, make_head("/api", authority="a.svc")) == "any-host-api"
    assert found(table, make_head("/web", authority="a.svc")) == "wild"
    assert found(table, make_head("/web", authority="unknown")) == "catch-all"


def test_host_less_route_before_host_routes_still_wins() -> None:
    # Order is config order across the index: a route without host listed first shadows later ones.
    table = RouteTable.from_config([route("first", prefix="/"), route("svc", host="svc")])
    assert found(table, make_head(authority="svc")) == "first"


def test_wildcard_before_exact_host_keeps_order() -> None:
    table = RouteTable.from_config(
        [route("wild", host="*.example.com"), route("exact", host="a.example.com")])
    assert found(table, make_head(authority="a.example.com")) == "wild"
    assert found(table, make_head(authority="b.example.com")) == "wild"
    assert found(table, make_head(authority="example.com")) is None


def test_host_is_case_insensitive_in_config() -> None:
    table = RouteTable.from_config([route("svc", host="SVC.Example.com"), route("w", host="*.EXAMPLE.com")])
    assert found(table, make_head(authority="svc.example.com")) == "svc"
    assert found(table, make_head(authority="x.example.com")) == "w"


def test_query_routes_in_the_index() -> None:
    table = RouteTable.from_config([
        route("debug", host="svc", query={"debug": {"exact": "1"}}),
        route("no-trace", host="svc", query={"trace": {"present": False}}),
        route("rest", host="svc"),
    ])
    assert found(table, make_head(authority="svc", query=b"debug=1")) == "debug"
    assert found(table, make_head(authority="svc", query=b"debug=2")) == "no-trace"
    assert found(table, make_head(authority="svc", query=b"trace=1")) == "rest"


def test_routes_index_and_cluster_names() -> None:
    table = RouteTable.from_config([
        route("a", cluster="c1"),
        RouteConfig.model_validate({"name": "b", "split": [{"cluster": "c2", "weight": 1},
                                                     {"cluster": "c1", "weight": 1}]}),
        route("c", cluster="c3"),
    ])
    assert [(r.index, r.name) for r in table.routes] == [(0, "a"), (1, "b"), (2, "c")]
    assert table.cluster_names() == ("c1", "c2", "c3")
    assert len(table) == 3
    assert isinstance(table.routes[1], CompiledRoute)
    assert table.routes[1].config.name == "b"


# --- property: the indexed find is exactly a linear scan ---------------------------------------------

_domains = ["a.com", "b.com", "x.a.com", "y.x.a.com", "c.org"]
_host_specs = st.one_of(
    st.none(),
    st.sampled_from(_domains),
    st.sampled_from(["*.a.com", "*.x.a.com", "*.com", "*.c.org"]),
    st.sampled_from([d.upper() for d in _domains]),
)
_paths = ["/", "/api", "/api/v1", "/api/v1/x", "/web", "/apix"]
_match_specs = st.fixed_dictionaries(
    {},
    optional={
        "host": _host_specs,
        "prefix": st.sampled_from(_paths),
        "methods": st.lists(st.sampled_from(["GET", "POST", "PUT"]), min_size=1, max_size=2),
        "query": st.dictionaries(st.just("q"), st.sampled_from([{"present": True}, {"exact": "1"}]),
                                 max_size=1),
        "headers": st.dictionaries(st.just("x-a"), st.sampled_from([{"present": False}, {"prefix": "v"}]),
                                   max_size=1),
    },
)
_heads = st.builds(
    make_head,
    st.sampled_from([*_paths, "/other", "/api/v2"]),
    method=st.sampled_from([b"GET", b"POST", b"DELETE"]),
    query=st.sampled_from([b"", b"q=1", b"q=2", b"r=1&q=1"]),
    authority=st.sampled_from([*_domains, "z.a.com", "a.x.a.com", "com", "unknown", ""]),
    headers=st.sampled_from([[], [(b"x-a", b"v1")], [(b"x-a", b"w")]]),
)


@settings(max_examples=300)
@given(specs=st.lists(_match_specs, max_size=12), heads=st.lists(_heads, min_size=1, max_size=8))
def test_indexed_find_equals_linear_scan(specs: list[dict[str, Any]], heads: list[RequestHead]) -> None:
    table = RouteTable.from_config([route(f"r{i}", **spec) for i, spec in enumerate(specs)])
    for head in heads:
        linear = next((r for r in table.routes if r.matcher.matches(head)), None)
        assert table.find(head) is linear


def test_routes_can_be_chosen_by_the_callers_identity() -> None:
    table = RouteTable([
        CompiledRoute(route("batch", host="api", peer_identity={"exact": "spiffe://cluster.local/ns/a/sa/batch"}), 0),
        CompiledRoute(route("team-a", peer_identity={"prefix": "spiffe://cluster.local/ns/a/"}), 1),
        CompiledRoute(route("anyone"), 2),
    ])
    head = make_head("/", authority="api")
    assert table.find(head, "spiffe://cluster.local/ns/a/sa/batch").name == "batch"  # type: ignore[union-attr]
    assert table.find(head, "spiffe://cluster.local/ns/a/sa/web").name == "team-a"  # type: ignore[union-attr]
    assert table.find(head, "spiffe://cluster.local/ns/b/sa/web").name == "anyone"  # type: ignore[union-attr]
    assert found(table, head) == "anyone"  # no identity
    other = make_head("/", authority="other")
    assert table.find(other, "spiffe://cluster.local/ns/a/sa/batch").name == "team-a"  # type: ignore[union-attr]
