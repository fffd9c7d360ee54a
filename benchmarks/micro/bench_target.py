"""Micro-benchmark: cost per request of reading the request target: path normalization and Host validation.

`normalize_path` on a typical API path (the fast path every such request takes: a few substring scans, the
input returned as is), on paths that need work (a dot segment, an unreserved escape, a long path with
both), and `route_authority` on a typical `Host: name:port` (against `authority_of`, what the codec
called before Host was validated). Plus a route regex, RE2 through `Regex.fullmatch`, against Python's
`re` on the same pattern and path (what the matchers ran before).
Run: `python -m benchmarks.micro.bench_target [--iterations N]`.
"""

from __future__ import annotations

import re
import sys

from benchmarks.micro._common import iterations, ns_per_op, print_results
from proxy.http.authority import route_authority
from proxy.http.path import BASE, MERGE_SLASHES, normalize_path
from proxy.message import authority_of
from proxy.routing.regex import Regex


def main(argv: list[str]) -> None:
    number = iterations(argv, 500_000, __doc__.splitlines()[0])
    ns: dict[str, object] = {
        "normalize_path": normalize_path,
        "route_authority": route_authority,
        "authority_of": authority_of,
        "BASE": BASE,
        "MERGE": MERGE_SLASHES,
        "typical": b"/api/v1/campaigns/8c3e0e5f/items",
        "dots": b"/api/v1/../v2/./campaigns",
        "escape": b"/api/v1/campaigns/%7Ealice",
        "long": b"/api/v1/campaigns/" + b"x" * 200 + b"/%2e%2e/items%2Fraw/%41",
        "host": b"campaigns.default.svc.cluster.local:8080",
        "host_text": "campaigns.default.svc.cluster.local:8080",
        "re2": Regex("/api/v[0-9]+/campaigns/.*"),
        "pyre": re.compile("/api/v[0-9]+/campaigns/.*"),
        "path_text": "/api/v1/campaigns/8c3e0e5f/items",
    }
    assert normalize_path(ns["typical"], BASE) is ns["typical"]  # type: ignore[arg-type]
    assert normalize_path(ns["dots"], BASE) == b"/api/v2/campaigns"  # type: ignore[arg-type]
    results = {
        "normalize_path, typical path (fast path), base": ns_per_op("normalize_path(typical, BASE)", ns, number),
        "normalize_path, typical path (fast path), merge_slashes":
            ns_per_op("normalize_path(typical, MERGE)", ns, number),
        "normalize_path, dot segments": ns_per_op("normalize_path(dots, BASE)", ns, number),
        "normalize_path, an unreserved escape": ns_per_op("normalize_path(escape, BASE)", ns, number),
        "normalize_path, 250-byte path, escapes and dots": ns_per_op("normalize_path(long, BASE)", ns, number),
        "route_authority, name:port": ns_per_op("route_authority(host)", ns, number),
        "(before) authority_of, name:port": ns_per_op("authority_of(host_text)", ns, number),
        "Regex.fullmatch (RE2), route regex": ns_per_op("re2.fullmatch(path_text)", ns, number),
        "(before) re.Pattern.fullmatch, route regex": ns_per_op("pyre.fullmatch(path_text)", ns, number),
    }
    print_results(number, results)


if __name__ == "__main__":
    main(sys.argv)
