"""Micro-benchmark: cost per request of route selection and split picks.

Times `RouteTable.find` on a one-route table against a 50-virtual-host table (3 routes per host: an API
prefix, a header route, a catch-all) for the same request hitting the same kind of route first, so the
host index's promise ("many virtual hosts cost no more than a few percent") shows as a number; plus the
other paths through the table (header route, third candidate, unknown host, query matcher) and
`Split.pick` for one cluster and a 90/10 split.
Run: `python -m benchmarks.micro.bench_routing [--iterations N]`.
"""

from __future__ import annotations

import random
import sys

from benchmarks.micro._common import iterations, ns_per_op, print_results
from proxy.config.model import RouteConfig, RouteMatchConfig, SplitEntryConfig
from proxy.message import RequestHead
from proxy.routing.split import Split
from proxy.routing.table import RouteTable

_HEADERS = [
    (b"host", b"svc-25.default.svc.cluster.local"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
    (b"x-request-id", b"4bf92f3577b34da6a3ce929d0e0e4736"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
]


def host(i: int) -> str:
    return f"svc-{i}.default.svc.cluster.local"


def head(authority: str, path: str = "/api/v1/campaigns", query: bytes = b"",
         headers: list[tuple[bytes, bytes]] | None = None) -> RequestHead:
    return RequestHead(method=b"GET", path=path, query=query, authority=authority,
                       host_header=authority.encode(), headers=[*_HEADERS, *(headers or [])])


def virtual_hosts(count: int) -> list[RouteConfig]:
    routes: list[RouteConfig] = []
    for i in range(count):
        routes += [
            RouteConfig(name=f"h{i}-api", cluster=f"c{i}", match=RouteMatchConfig(host=host(i), prefix="/api")),
            RouteConfig(name=f"h{i}-v2", cluster=f"c{i}-v2",
                  match=RouteMatchConfig.model_validate({"host": host(i), "prefix": "/web",
                                                   "headers": {"x-version": {"exact": "v2"}}})),
            RouteConfig(name=f"h{i}-rest", cluster=f"c{i}", match=RouteMatchConfig(host=host(i), prefix="/")),
        ]
    return routes


def main(argv: list[str]) -> None:
    number = iterations(argv, 200_000, __doc__.splitlines()[0])
    one = RouteTable.from_config(
        [RouteConfig(name="api", cluster="c", match=RouteMatchConfig(host=host(25), prefix="/api"))])
    many = RouteTable.from_config(virtual_hosts(50))
    query_table = RouteTable.from_config([
        RouteConfig(name="debug", cluster="c",
              match=RouteMatchConfig.model_validate({"query": {"debug": {"exact": "1"}}})),
        RouteConfig(name="rest", cluster="c", match=RouteMatchConfig(prefix="/")),
    ])
    ns: dict[str, object] = {
        "one": one,
        "many": many,
        "query_table": query_table,
        "hit": head(host(25)),
        "header": head(host(25), path="/web", headers=[(b"x-version", b"v2")]),
        "third": head(host(25), path="/other"),
        "unknown": head("nowhere.example"),
        "with_query": head("x", query=b"a=1&b=2&debug=0"),
        "single": Split.from_config("c", None),
        "weighted": Split.from_config(None, [SplitEntryConfig(cluster="v1", weight=90),
                                             SplitEntryConfig(cluster="v2", weight=10)]),
        "rng": random.Random(1),
    }
    assert one.find(ns["hit"]) is one.routes[0]  # type: ignore[arg-type]
    for request, expected in (("hit", "h25-api"), ("header", "h25-v2"), ("third", "h25-rest")):
        assert many.find(ns[request]).name == expected  # type: ignore[arg-type, union-attr]
    results = {
        "find, 1-route table (hit)": ns_per_op("one.find(hit)", ns, number),
        "find, 50 hosts x 3 routes (same hit, 1st candidate)": ns_per_op("many.find(hit)", ns, number),
        "find, 50 hosts x 3 routes (header route, 2nd)": ns_per_op("many.find(header)", ns, number),
        "find, 50 hosts x 3 routes (3rd candidate)": ns_per_op("many.find(third)", ns, number),
        "find, 50 hosts x 3 routes (unknown host -> None)": ns_per_op("many.find(unknown)", ns, number),
        "find, query route misses, next hits (1 parse)": ns_per_op("query_table.find(with_query)", ns,
                                                                   number),
        "Split.pick, single cluster": ns_per_op("single.pick(rng)", ns, number),
        "Split.pick, 90/10": ns_per_op("weighted.pick(rng)", ns, number),
    }
    print_results(number, results)


if __name__ == "__main__":
    main(sys.argv)
