"""cross_check: cluster references, unique names, address collisions, TLS files, timeouts; and the lines
load_config reports them at."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from proxy.config.load import ConfigError, load_config
from proxy.config.model import Config
from proxy.config.validate import Issue, cross_check


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def config(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]] | None = None,
           **top: Any) -> Config:
    if clusters is None:
        clusters = [{"name": "up", "endpoints": ["127.0.0.1:8080"]}]
    return Config.model_validate({"listeners": listeners, "clusters": clusters, **top})


def listener(name: str = "l", address: str = "127.0.0.1:0", **extra: Any) -> dict[str, Any]:
    return {"name": name, "address": address, **extra}


def route(name: str = "r", cluster: str = "up", **extra: Any) -> dict[str, Any]:
    return {"name": name, "cluster": cluster, **extra}


def test_a_clean_config_has_no_issues(tmp_path: Path) -> None:
    assert cross_check(config([listener(routes=[route()])]), tmp_path) == []


# --- cluster references -------------------------------------------------------------------------------


def test_route_and_split_naming_missing_clusters() -> None:
    split = {"name": "s", "split": [{"cluster": "up", "weight": 9}, {"cluster": "gone", "weight": 1}]}
    issues = cross_check(config([listener(routes=[route(cluster="nope"), split])]), ".")
    assert issues == [
        Issue(("listeners", 0, "routes", 0, "cluster"), "no cluster named 'nope'"),
        Issue(("listeners", 0, "routes", 1, "split", 1, "cluster"), "no cluster named 'gone'"),
    ]


def test_missing_cluster_is_reported_at_the_cluster_line_not_the_route_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: out
            address: 127.0.0.1:0
            routes:
              - name: canary
                match: {prefix: /}
                cluster: no-such-cluster
              - name: split
                split:
                  - {cluster: up, weight: 90}
                  - cluster: gone
                    weight: 10
        clusters:
          - name: up
            endpoints: ["127.0.0.1:8080"]
        """)
    assert problems(path) == [
        f"{path}:7: listeners[0].routes[0].cluster: no cluster named 'no-such-cluster'",
        f"{path}:11: listeners[0].routes[1].split[1].cluster: no cluster named 'gone'",
    ]


def test_assumed_clusters_are_not_dangling() -> None:
    issues = cross_check(config([listener(routes=[route(cluster="failed-schema")])]), ".",
                         assume_clusters={"failed-schema"})
    assert issues == []


# --- unique names -------------------------------------------------------------------------------------


def test_duplicate_names(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: out
            address: 127.0.0.1:0
            routes:
              - {name: a, cluster: up}
              - {name: a, cluster: up}
          - name: out
            address: 127.0.0.1:0
            routes:
              - {name: a, cluster: up}
        clusters:
          - name: up
            endpoints: ["127.0.0.1:8080"]
          - name: up
            endpoints: ["127.0.0.1:8081"]
        """)
    assert problems(path) == [
        f"{path}:6: listeners[0].routes[1].name: duplicate route name 'a' in this listener (also routes[0])",
        f"{path}:7: listeners[1].name: duplicate listener name 'out' (also listeners[0])",
        f"{path}:14: clusters[1].name: duplicate cluster name 'up' (also clusters[0])",
    ]


# --- addresses ----------------------------------------------------------------------------------------


def test_same_address_twice() -> None:
    issues = cross_check(config([listener("a", "127.0.0.1:15001"), listener("b", "127.0.0.1:15001")]), ".")
    assert issues == [Issue(("listeners", 1, "address"),
                            "address 127.0.0.1:15001 collides with listeners[0]'s 127.0.0.1:15001")]


def test_port_zero_never_collides() -> None:
    assert cross_check(config([listener("a", "127.0.0.1:0"), listener("b", "127.0.0.1:0")]), ".") == []


def test_wildcard_collides_with_a_specific_address_on_the_same_port() -> None:
    issues = cross_check(config([listener("a", "0.0.0.0:15006"), listener("b", "127.0.0.1:15006"),
                                 listener("c", "127.0.0.1:15007")]), ".")
    assert [issue.loc for issue in issues] == [("listeners", 1, "address")]


def test_listener_on_the_admin_address(tmp_path: Path) -> None:
    path = write(tmp_path, """
        admin: {address: "127.0.0.1:15000"}
        listeners:
          - name: out
            address: 127.0.0.1:15000
        """)
    assert problems(path) == [
        f"{path}:4: listeners[0].address: address 127.0.0.1:15000 collides with admin.address "
        "127.0.0.1:15000"]


def test_default_admin_address_counts_too() -> None:
    issues = cross_check(config([listener("a", "127.0.0.1:15000")]), ".")
    assert issues == [Issue(("listeners", 0, "address"),
                            "address 127.0.0.1:15000 collides with admin.address 127.0.0.1:15000")]
    assert cross_check(config([listener("a", "127.0.0.1:15000")]), ".", check_admin=False) == []


# --- TLS files ----------------------------------------------------------------------------------------


def test_tls_files_must_be_readable(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "dir.pem").mkdir()
    path = write(tmp_path, """
        listeners:
          - name: in
            address: 127.0.0.1:0
            tls:
              cert: cert.pem
              key: missing-key.pem
              ca: dir.pem
        clusters:
          - name: up
            endpoints: ["127.0.0.1:8080"]
            tls: {ca: /nonexistent/ca.pem}
        """)
    assert problems(path) == [
        f"{path}:6: listeners[0].tls.key: unreadable TLS file: {tmp_path / 'missing-key.pem'}: "
        "No such file or directory",
        f"{path}:7: listeners[0].tls.ca: unreadable TLS file: {tmp_path / 'dir.pem'}: Is a directory",
        f"{path}:11: clusters[0].tls.ca: unreadable TLS file: /nonexistent/ca.pem: No such file or directory",
    ]


def test_tls_paths_resolve_against_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    monkeypatch.chdir("/")
    cfg = config([listener(tls={"cert": "c.pem", "key": "k.pem"})])
    assert cross_check(cfg, tmp_path) == []
    assert [issue.loc[-1] for issue in cross_check(cfg, tmp_path / "elsewhere")] == ["cert", "key"]


# --- timeouts -----------------------------------------------------------------------------------------


def test_per_try_timeout_longer_than_route_timeout(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: out
            address: 127.0.0.1:0
            routes:
              - name: slow
                cluster: up
                timeout: 500ms
                retries:
                  attempts: 2
                  per_try_timeout: 2s
        clusters:
          - {name: up, endpoints: ["127.0.0.1:8080"]}
        """)
    assert problems(path) == [
        f"{path}:10: listeners[0].routes[0].retries.per_try_timeout: per_try_timeout 2s is longer than the "
        "route timeout 500ms: the route timeout would always fire first"]


@pytest.mark.parametrize("extra", [
    {"timeout": "1s", "retries": {"per_try_timeout": "1s"}},
    {"retries": {"per_try_timeout": "10s"}},
    {"timeout": "1s", "retries": {"attempts": 3}},
])
def test_per_try_timeout_that_fits_or_has_nothing_to_fit(extra: dict[str, Any]) -> None:
    assert cross_check(config([listener(routes=[route(**extra)])]), ".") == []


# --- schema and cross-reference problems in one run ---------------------------------------------------


def test_schema_and_reference_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: out
            address: 127.0.0.1:0
            http: {idle_timeout: forever}
            routes:
              - name: a
                cluster: nope
              - name: b
                cluster: broken
              - name: c
                cluster: up
                timeout: 1s
                retries: {per_try_timeout: 2s}
        clusters:
          - name: up
            endpoints: ["127.0.0.1:8080"]
          - name: broken
            endpoints: ["127.0.0.1:8080"]
            load_balancer: random
        """)
    assert problems(path) == [
        f"{path}:4: listeners[0].http.idle_timeout: bad duration 'forever': "
        "use a number with ms, s, m or h, like '250ms'",
        f"{path}:7: listeners[0].routes[0].cluster: no cluster named 'nope'",
        f"{path}:13: listeners[0].routes[2].retries.per_try_timeout: per_try_timeout 2s is longer than the "
        "route timeout 1s: the route timeout would always fire first",
        f"{path}:19: clusters[1].load_balancer: must be 'round_robin', 'least_request', 'peak_ewma' or "
        "'ring_hash' (got 'random')",
    ]


def test_indices_after_a_dropped_route_still_point_at_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: out
            address: 127.0.0.1:0
            routes:
              - name: broken
                split: []
              - name: b
                cluster: nope
        """)
    assert problems(path) == [
        f"{path}:5: listeners[0].routes[0]: split must name at least one cluster",
        f"{path}:8: listeners[0].routes[1].cluster: no cluster named 'nope'",
    ]


# --- caller identities --------------------------------------------------------------------------------


def test_caller_identity_is_used_only_where_client_certificates_are_verified(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    uses = [route(match={"prefix": "/", "peer_identity": {"prefix": "spiffe://cluster.local/"}},
                  rate_limit={"requests_per_second": 1, "burst": 1, "key": "peer_identity"})]
    plain = listener(routes=uses)
    server_only = listener(name="s", tls={"cert": "c.pem", "key": "k.pem"}, routes=uses)
    mutual = listener(name="m", tls={"cert": "c.pem", "key": "k.pem", "ca": "ca.pem", "require_client_cert": True},
                      routes=uses)
    optional = listener(name="o", tls={"cert": "c.pem", "key": "k.pem", "ca": "ca.pem"}, routes=uses)
    issues = cross_check(config([plain, server_only, mutual, optional]), tmp_path)
    assert [issue.loc for issue in issues] == [
        ("listeners", 0, "routes", 0, "match", "peer_identity"),
        ("listeners", 0, "routes", 0, "rate_limit", "key"),
        ("listeners", 1, "routes", 0, "match", "peer_identity"),
        ("listeners", 1, "routes", 0, "rate_limit", "key"),
    ]
    assert all("callers have no identity" in issue.message for issue in issues)


def test_rate_limit_key_forms_are_reported_one_at_a_time(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: l
            address: 127.0.0.1:0
            routes:
              - name: a
                match: {prefix: /}
                cluster: up
                rate_limit: {requests_per_second: 1, burst: 1, key: peer_idenity}
              - name: b
                match: {prefix: /}
                cluster: up
                rate_limit: {requests_per_second: 1, burst: 1, key: {head: x}}
        clusters:
          - name: up
            endpoints: ["127.0.0.1:8080"]
    """)
    assert problems(path) == [
        f"{path}:8: listeners[0].routes[0].rate_limit.key: must be 'peer_identity' (got 'peer_idenity')",
        f"{path}:12: listeners[0].routes[1].rate_limit.key.head: unknown key",
        f"{path}:12: listeners[0].routes[1].rate_limit.key.header: required key missing",
    ]
