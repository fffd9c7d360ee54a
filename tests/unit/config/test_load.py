"""load_config: YAML 1.2 parsing, every problem as `FILE:LINE: path: message`, paths, hash (redaction: test_redact)."""

from __future__ import annotations

import hashlib
import shutil
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import load as load_module
from proxy.config.load import (
    MAX_ALIAS_BYTES,
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    ConfigError,
    ConfigUnreadable,
    LoadedConfig,
    Problem,
    load_config,
    parse_config,
    read_config,
)
from proxy.config.model import Address, parse_duration, parse_size
from tests.pki import tls_examples

REPO = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO / "config"
# The product brief's contract sits beside the repository (../shared); a clean clone elsewhere may not
# have it, so tests compare against it only when it is there and otherwise use config/full.yaml.
CONTRACT = Path(__file__).resolve().parents[3].parent / "shared" / "config-contract.yaml"
needs_contract = pytest.mark.skipif(not CONTRACT.exists(), reason="../shared/config-contract.yaml not present")
CONTRACT_CERTS = ("payment-service.pem", "payment-service-key.pem", "ca.pem")


def write(tmp_path: Path, text: str, name: str = "sidecar.yaml") -> Path:
    """Write YAML whose first line is line 1 (the test's line numbers count from there)."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


MINIMAL_TAIL = """
listeners:
  - name: out
    address: 127.0.0.1:0
    routes:
      - name: all
        match: {prefix: /}
        cluster: backend
clusters:
  - name: backend
    endpoints: ["127.0.0.1:8080"]
"""


# --- the shipped examples -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["minimal.yaml", "routing.yaml", "resilience.yaml"])
def test_plain_examples_load(name: str) -> None:
    loaded = load_config(CONFIG_DIR / name)
    assert loaded.config.listeners[0].address == Address(host="127.0.0.1", port=15001)
    assert loaded.config.admin.address == Address(host="127.0.0.1", port=15000)


def test_the_demo_example_loads_beside_its_certs_and_names_them_one_level_up(tmp_path: Path) -> None:
    (demo,) = tls_examples(tmp_path, "demo.yaml")
    config = load_config(demo).config
    assert [listener.name for listener in config.listeners] == ["outbound", "inbound"]
    assert config.listeners[0].address == Address(host="127.0.0.1", port=15001)
    assert config.admin.address == Address(host="127.0.0.1", port=15000)
    tls = config.listeners[1].tls
    assert tls is not None and Path(tls.cert).samefile(tmp_path / "certs" / "dev" / "campaign-service.pem")
    with pytest.raises(ConfigError):  # without certs/dev beside it (git-ignored) it does not load
        parse_config((CONFIG_DIR / "demo.yaml").read_bytes(), tmp_path / "elsewhere" / "demo.yaml")


def test_minimal_example_is_one_route_to_one_static_cluster() -> None:
    config = load_config(CONFIG_DIR / "minimal.yaml").config
    (route,) = config.listeners[0].routes
    (cluster,) = config.clusters
    assert (route.match.prefix, route.cluster) == ("/", cluster.name)
    assert [e.address for e in cluster.endpoints or ()] == [Address(host="127.0.0.1", port=8080)]


def test_routing_example_shows_every_match_kind() -> None:
    routes = load_config(CONFIG_DIR / "routing.yaml").config.listeners[0].routes
    assert any(r.match.headers for r in routes)
    assert any(r.split and [e.weight for e in r.split] == [90, 10] for r in routes)
    assert any(r.match.exact for r in routes) and any(r.match.regex for r in routes)
    assert any(r.match.host and r.match.host.startswith("*.") for r in routes)
    assert any(r.match.methods and r.match.query for r in routes)
    assert any(r.headers for r in routes) and any(r.rewrite for r in routes)


@needs_contract
def test_full_example_is_the_contract_with_certs_one_level_up() -> None:
    full = (CONFIG_DIR / "full.yaml").read_text()
    assert full == CONTRACT.read_text().replace("certs/dev/", "../certs/dev/")


def test_full_example_loads_once_its_cert_files_exist(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    shutil.copy(CONFIG_DIR / "full.yaml", tmp_path / "config" / "full.yaml")
    certs = tmp_path / "certs" / "dev"
    certs.mkdir(parents=True)
    for name in CONTRACT_CERTS:
        (certs / name).write_text("dummy PEM\n")
    loaded = load_config(tmp_path / "config" / "full.yaml")
    config = loaded.config
    assert [lst.name for lst in config.listeners] == ["inbound", "outbound"]
    retries = config.listeners[1].routes[1].retries
    assert retries is not None and retries.on == ["connect-failure", "reset", "gateway-error", "503"]
    tls = config.listeners[0].tls
    assert tls is not None and Path(tls.cert).is_absolute()
    assert Path(tls.cert).samefile(certs / CONTRACT_CERTS[0])


def test_contract_without_cert_files_reports_each_one(tmp_path: Path) -> None:
    # config/full.yaml is the contract with certs one level up: undo that to get the contract's own text.
    text = (CONFIG_DIR / "full.yaml").read_text().replace("../certs/dev/", "certs/dev/")
    (tmp_path / "contract.yaml").write_text(text)
    found = problems(tmp_path / "contract.yaml")
    assert len(found) == 9  # cert, key, ca of one listener and two clusters
    line = text.splitlines().index("      cert: certs/dev/payment-service.pem") + 1
    assert found[0] == (f"{tmp_path / 'contract.yaml'}:{line}: listeners[0].tls.cert: unreadable TLS file: "
                        f"{tmp_path / 'certs/dev/payment-service.pem'}: No such file or directory")


# --- LoadedConfig -------------------------------------------------------------------------------------


def test_loaded_config_records_source(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TAIL)
    loaded = load_config(path)
    assert isinstance(loaded, LoadedConfig)
    assert loaded.path == path and loaded.path.is_absolute()
    assert loaded.base_dir == tmp_path
    assert loaded.version_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.source_text == path.read_text()


def test_relative_tls_paths_resolve_against_the_config_dir(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tls").mkdir()
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / "tls" / name).write_text("x")
    path = write(tmp_path, """
        listeners:
          - name: in
            address: 127.0.0.1:0
            tls: {cert: tls/c.pem, key: tls/k.pem, ca: tls/ca.pem}
        clusters:
          - name: up
            endpoints: ["10.0.0.1:80"]
            tls: {cert: tls/c.pem, key: tls/k.pem, ca: tls/ca.pem}
        """)
    monkeypatch.chdir("/")  # the process's cwd must not matter
    config = load_config(path).config
    assert config.listeners[0].tls is not None and config.clusters[0].tls is not None
    assert config.listeners[0].tls.key == str(tmp_path / "tls/k.pem")
    assert config.clusters[0].tls.ca == str(tmp_path / "tls/ca.pem")


def test_a_relative_keys_file_resolves_against_the_config_dir(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api-keys.yaml").write_text("{}\n")
    path = write(tmp_path, """
        listeners:
          - name: in
            address: 127.0.0.1:0
            routes:
              - {name: r, cluster: up, api_key: {header: X-Api-Key, keys_file: secrets/api-keys.yaml}}
        clusters:
          - name: up
            endpoints: ["10.0.0.1:80"]
        """)
    monkeypatch.chdir("/")
    api_key = load_config(path).config.listeners[0].routes[0].api_key
    assert api_key is not None and api_key.keys_file == str(tmp_path / "secrets/api-keys.yaml")
    assert api_key.header == "x-api-key"


# --- YAML 1.2 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["on", '"on"', "'on'"])
def test_retry_on_key_works_quoted_and_unquoted(tmp_path: Path, key: str) -> None:
    retries_line = f"        retries: {{attempts: 2, {key}: [reset, 503]}}\n"
    path = write(tmp_path, MINIMAL_TAIL.replace("cluster: backend\n", "cluster: backend\n" + retries_line, 1))
    retries = load_config(path).config.listeners[0].routes[0].retries
    assert retries is not None and retries.on == ["reset", "503"]


def test_yes_no_off_are_strings_and_only_true_false_are_booleans(tmp_path: Path) -> None:
    path = write(tmp_path, """
        node: {service: yes, namespace: off}
        listeners:
          - name: in
            address: 127.0.0.1:0
            tls: {cert: /dev/null, key: /dev/null, ca: /dev/null, require_client_cert: TRUE}
        """)
    config = load_config(path).config
    assert (config.node.service, config.node.namespace) == ("yes", "off")
    assert config.listeners[0].tls is not None and config.listeners[0].tls.require_client_cert is True


def test_yaml11_boolean_words_are_not_booleans(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: in
            address: 127.0.0.1:0
            tls: {cert: /dev/null, key: /dev/null, ca: /dev/null, require_client_cert: yes}
        """)
    assert problems(path) == [
        f"{path}:4: listeners[0].tls.require_client_cert: must be true or false (got 'yes')"]


def test_yaml11_sexagesimals_and_dates_stay_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "node: {service: 1:30, namespace: 2024-01-01}\n")
    config = load_config(path).config
    assert (config.node.service, config.node.namespace) == ("1:30", "2024-01-01")


def test_a_boolean_is_not_an_integer(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: true\n")
    assert problems(path) == [f"{path}:1: workers: must be an integer or 'auto' (got true)"]


def test_workers_auto_and_number(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "workers: auto\n", "a.yaml")).config.workers == "auto"
    assert load_config(write(tmp_path, "workers: 4\n", "b.yaml")).config.workers == 4
    path = write(tmp_path, "workers: 0\n", "c.yaml")
    assert problems(path) == [f"{path}:1: workers: workers must be at least 1 (or 'auto')"]


# --- values: durations, sizes, addresses -------------------------------------------------------------


def test_durations_sizes_and_ipv6_addresses(tmp_path: Path) -> None:
    path = write(tmp_path, """
        drain_delay: 250ms
        drain_timeout: 1m
        listeners:
          - name: in
            address: "[::1]:15006"
            http: {max_request_headers: 1MiB, max_request_body: 64KiB, header_read_timeout: 1.5s}
        clusters:
          - name: up
            endpoints: ["[::1]:8080", "backend.local:80"]
        """)
    config = load_config(path).config
    assert (config.drain_delay, config.drain_timeout) == (0.25, 60.0)
    listener = config.listeners[0]
    assert listener.address == Address(host="::1", port=15006) and str(listener.address) == "[::1]:15006"
    assert (listener.http.max_request_headers, listener.http.max_request_body) == (1024 * 1024, 64 * 1024)
    assert listener.http.header_read_timeout == 1.5
    assert [e.address for e in config.clusters[0].endpoints or ()] == [Address(host="::1", port=8080),
                                                                      Address(host="backend.local", port=80)]


def test_bad_duration_size_and_address_at_their_value_lines(tmp_path: Path) -> None:
    path = write(tmp_path, """
        drain_timeout: 30
        listeners:
          - name: in
            address: "[::1:15006"
            http:
              max_request_headers: 60 kilobytes
              idle_timeout: 5 minutes
        """)
    assert problems(path) == [
        f"{path}:1: drain_timeout: a duration needs a unit, like '250ms' or '2s' (got 30)",
        f"{path}:4: listeners[0].address: bad IPv6 address '[::1:15006': use '[::1]:8080'",
        f"{path}:6: listeners[0].http.max_request_headers: bad size '60 kilobytes': "
        "use a number with B, KiB, MiB or GiB, like '64KiB'",
        f"{path}:7: listeners[0].http.idle_timeout: bad duration '5 minutes': "
        "use a number with ms, s, m or h, like '250ms'",
    ]


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_round_trip(amount: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    assert parse_duration(f"{amount}{unit}") == pytest.approx(amount * factor)


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["", "B", "KiB", "MiB", "GiB", "KB", "MB"]))
def test_size_round_trip(amount: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2}[unit]
    assert parse_size(f"{amount}{unit}") == amount * factor
    assert parse_size(amount) == amount


# --- problems and their lines -------------------------------------------------------------------------


def test_problem_formats_with_and_without_a_path() -> None:
    assert str(Problem("c.yaml", 3, "listeners[1].routes[0].cluster", "no cluster named 'x'")) == (
        "c.yaml:3: listeners[1].routes[0].cluster: no cluster named 'x'")
    assert str(Problem("c.yaml", 1, "", "YAML syntax error: boom")) == "c.yaml:1: YAML syntax error: boom"


def test_unknown_key_is_reported_at_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TAIL.replace("    address: 127.0.0.1:0\n",
                                                "    address: 127.0.0.1:0\n    colour: blue\n"))
    assert problems(path) == [f"{path}:4: listeners[0].colour: unknown key"]


def test_unknown_key_in_a_flow_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TAIL.replace("{prefix: /}", "{prefix: /, sufix: /x}"))
    assert problems(path) == [f"{path}:6: listeners[0].routes[0].match.sufix: unknown key"]


def test_missing_required_key_is_reported_at_its_parent(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: in
            routes: []
        """)
    assert problems(path) == [f"{path}:2: listeners[0].address: required key missing"]


def test_missing_nested_key_is_reported_at_the_parent_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TAIL.replace(
        "cluster: backend\n", "cluster: backend\n        rate_limit:\n          burst: 5\n", 1))
    assert problems(path) == [
        f"{path}:8: listeners[0].routes[0].rate_limit.requests_per_second: required key missing"]


def test_duplicate_key_is_reported_at_the_second_one(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TAIL.replace("    endpoints:", "    name: again\n    endpoints:"))
    assert problems(path) == [f"{path}:10: clusters[0].name: duplicate key (first at line 9)"]


def test_wrong_types(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners: {name: in}
        tracing:
          sampling: lots
          propagation: [w3c, zipkin]
        access_log: {format: xml}
        """)
    assert problems(path) == [
        f"{path}:1: listeners: must be a list (got a mapping)",
        f"{path}:3: tracing.sampling: must be a number (got 'lots')",
        f"{path}:4: tracing.propagation[1]: must be 'w3c' or 'b3' (got 'zipkin')",
        f"{path}:5: access_log.format: must be 'json' or 'text' (got 'xml')",
    ]


def test_model_rule_on_a_route_is_reported_at_the_route(tmp_path: Path) -> None:
    split_line = "        split: [{cluster: backend, weight: 1}]\n"
    path = write(tmp_path, MINIMAL_TAIL.replace("cluster: backend\n", "cluster: backend\n" + split_line))
    assert problems(path) == [f"{path}:5: listeners[0].routes[0]: give exactly one of cluster or split"]


def test_yaml_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        listeners:
          - name: in
            address: [127.0.0.1:0
        clusters: []
        """)
    (found,) = problems(path)
    assert found.startswith(f"{path}:4: YAML syntax error: ")


def test_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "tabs.yaml"
    path.write_text("node:\n\tservice: x\n")
    (found,) = problems(path)
    assert found.startswith(f"{path}:2: YAML syntax error: ")


@pytest.mark.parametrize(("text", "line", "message"), [
    ("", 1, "the config is empty: expected a mapping of settings"),
    ("# only a comment\n", 1, "the config is empty: expected a mapping of settings"),
    ("\n- a\n- b\n", 2, "the top level must be a mapping of settings"),
    ("just text\n", 1, "the top level must be a mapping of settings"),
    ("a: 1\n---\nb: 2\n", 2,
     "YAML syntax error: expected a single document in the stream but found another document"),
])
def test_top_level_must_be_one_mapping(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert problems(path) == [f"{path}:{line}: {message}"]


def test_unreadable_file_is_one_problem_without_a_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigUnreadable) as caught:
        load_config(path)
    expected = f"{path}: cannot read the config file: No such file or directory"
    assert [str(p) for p in caught.value.problems] == [expected]
    assert caught.value.reason == "No such file or directory"
    with pytest.raises(ConfigUnreadable):
        load_config(tmp_path)  # a directory


def test_problem_file_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "workers: 0\n")
    monkeypatch.chdir(tmp_path)
    expected = "sidecar.yaml:1: workers: workers must be at least 1 (or 'auto')"
    assert problems(Path("sidecar.yaml")) == [expected]


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    path = write(tmp_path, """
        workers: maybe
        drain_timeout: 30
        listeners:
          - name: out
            address: 127.0.0.1:15001
            colour: blue
            routes:
              - name: a
                match: {prefix: /, exact: /x}
                cluster: nope
              - name: b
                cluster: backend
                retries: {on: [reset, bogus]}
        clusters:
          - name: backend
            endpoints: ["127.0.0.1:99999"]
            load_balancer: fastest
          - name: ok
            endpoints: [localhost:80]
            name: dup
        tracing:
          sampling: 2
        """)
    assert problems(path) == [
        f"{path}:1: workers: must be an integer or 'auto' (got 'maybe')",
        f"{path}:2: drain_timeout: a duration needs a unit, like '250ms' or '2s' (got 30)",
        f"{path}:6: listeners[0].colour: unknown key",
        f"{path}:9: listeners[0].routes[0].match: give at most one of exact, prefix, regex",
        f"{path}:10: listeners[0].routes[0].cluster: no cluster named 'nope'",
        f"{path}:13: listeners[0].routes[1].retries.on: unknown retry condition 'bogus': "
        "use connect-failure, reset, gateway-error, 5xx, retriable-4xx, cancelled, deadline-exceeded, internal, "
        "resource-exhausted, unavailable or a status code",
        f"{path}:16: clusters[0].endpoints[0]: bad port in '127.0.0.1:99999': a number from 0 to 65535",
        f"{path}:17: clusters[0].load_balancer: must be 'round_robin', 'least_request', 'peak_ewma' or "
        "'ring_hash' (got 'fastest')",
        f"{path}:20: clusters[1].name: duplicate key (first at line 18)",
        f"{path}:22: tracing.sampling: must be at most 1.0 (got 2)",
    ]
    # route b names `backend`, which failed the schema: it exists, so no dangling-reference report.


def test_config_error_message_is_one_problem_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 0\ncolour: blue\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).splitlines() == [
        f"{path}:1: workers: workers must be at least 1 (or 'auto')", f"{path}:2: colour: unknown key"]


# --- budgets: alias bombs, absurd nesting ------------------------------------------------------------


def bomb(levels: int, width: int = 9) -> str:
    """A "billion laughs": each anchor is a list of `width` aliases of the one before (width**levels nodes)."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\nlisteners: []\n"


def test_alias_bomb_is_refused_at_the_alias_that_crosses_the_budget_before_anything_is_built(
        tmp_path: Path) -> None:
    path = write(tmp_path, bomb(8))  # 9**8 = 43 million nodes from 382 bytes
    started = time.perf_counter()
    found = problems(path)
    assert time.perf_counter() - started < 0.5
    # a0..a4 copy in 74,718 nodes; the first *a4 in a5's list adds 66,430 more: line 6 crosses 100,000.
    assert found == [f"{path}:6: alias *a4 expands the config past the limit of {MAX_ALIAS_NODES} YAML nodes "
                     "copied in by aliases (nested aliases multiply)"]


def test_many_small_aliases_count_against_the_alias_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "MAX_ALIAS_NODES", 5)
    path = write(tmp_path, "x: &x 1\nlist:\n" + "".join(f"  - *x  # {i}\n" for i in range(8)))
    (found,) = problems(path)
    assert found.startswith(f"{path}:8: alias *x expands the config past the limit of 5 ")


def test_aliases_within_the_budget_load_as_if_written_out(tmp_path: Path) -> None:
    # The legitimate use: one retry policy shared by many routes.
    first = "      - {name: r0, match: {prefix: /0}, cluster: backend, retries: &policy {attempts: 2, on: [reset]}}\n"
    rest = "".join(f"      - {{name: r{i}, match: {{prefix: /{i}}}, cluster: backend, retries: *policy}}\n"
                   for i in range(1, 300))
    path = write(tmp_path, "listeners:\n  - name: out\n    address: 127.0.0.1:0\n    routes:\n" + first + rest
                 + "clusters:\n  - {name: backend, endpoints: ['127.0.0.1:8080']}\n")
    routes = load_config(path).config.listeners[0].routes
    assert len(routes) == 300
    assert all(route.retries is not None and route.retries.attempts == 2 for route in routes)


def test_nesting_deeper_than_the_budget_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 1\nlisteners: " + "[" * 5000 + "]" * 5000 + "\n")
    assert problems(path) == [f"{path}:2: nested deeper than the limit of {MAX_DEPTH} levels"]


def test_nesting_made_deep_by_aliases_is_refused_at_the_alias(tmp_path: Path) -> None:
    # Each anchor nests the previous one a level deeper: only the expansion is deeper than the budget.
    lines = ["d0: &d0 [x]"] + [f"d{i}: &d{i} [*d{i - 1}]" for i in range(1, 70)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    # d_i's list sits at level 2 and *d_(i-1) below it expands i+1 levels: d62's alias reaches level 65.
    assert problems(path) == [f"{path}:63: alias *d61 nests the config deeper than the limit of {MAX_DEPTH} levels"]


def test_node_budget_counts_written_and_aliased_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "MAX_NODES", 10)
    # root, a, [, 1, 2, b, and *a copies 3 more: 9; then c, and c's list is the 11th node.
    path = write(tmp_path, "a: &a [1, 2]\nb: *a\nc: [3]\n")
    assert problems(path) == [f"{path}:3: the config has more than the limit of 10 YAML nodes (aliases expanded)"]


def test_recursive_alias_is_still_a_problem_not_a_hang(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners: &l [*l, *l]\n")
    assert f"{path}:1: listeners[0]: recursive YAML alias" in problems(path)


def test_undefined_alias_is_a_syntax_error_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 1\nlisteners: *nowhere\n")
    assert problems(path) == [f"{path}:2: YAML syntax error: found undefined alias 'nowhere'"]


def test_parse_config_takes_bytes_and_hashes_them(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TAIL)
    raw = read_config(path)
    loaded = parse_config(raw, path)
    assert loaded.version_hash == hashlib.sha256(raw).hexdigest() == load_config(path).version_hash
    assert loaded.path == path and loaded.source_text == raw.decode()


def test_aliases_of_a_long_scalar_count_its_bytes_against_the_budget(tmp_path: Path) -> None:
    # One alias of a scalar is one node, but each copy is built (and here sent on every request).
    value = "x" * 20_000
    lines = [f"long: &s {value}", "listeners:", "  - name: out", "    address: 127.0.0.1:0", "    routes:",
             "      - name: r", "        match: {prefix: /}", "        cluster: backend",
             "        headers:", "          request:", "            set:"]
    lines += [f"              h{i}: *s" for i in range(400)]
    path = write(tmp_path, "\n".join(lines) + "\nclusters:\n  - {name: backend, endpoints: ['127.0.0.1:8080']}\n")
    started = time.perf_counter()
    (found,) = problems(path)
    assert time.perf_counter() - started < 0.5
    crossing = 12 + MAX_ALIAS_BYTES // 20_000  # the first line whose alias takes the copies past the budget
    assert found == (f"{path}:{crossing}: alias *s expands the config past the limit of {MAX_ALIAS_BYTES} "
                     "bytes of text copied in by aliases")


def test_ring_hash_settings_load_and_their_problems_point_at_the_load_balancer_line(tmp_path: Path) -> None:
    good = write(tmp_path, MINIMAL_TAIL + "    load_balancer: {ring_hash: {cookie: session}}\n", "good.yaml")
    ring = load_config(good).config.clusters[0].ring_hash
    assert ring is not None and ring.cookie == "session"
    bad = write(tmp_path, MINIMAL_TAIL + "    load_balancer:\n      ring_hash: {header: x-user-id, source_ip: true}\n",
                "bad.yaml")
    assert problems(bad) == [
        f"{bad}:12: clusters[0].load_balancer.ring_hash: give exactly one of header, cookie or source_ip: true",
    ]
