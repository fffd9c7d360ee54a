"""The Grafana dashboard (`deploy/grafana/horizon-sidecar.json`) is valid dashboard JSON over a `${datasource}`
Prometheus variable, has the panels issue 18 asks for, and its PromQL names only metrics the sidecar exposes.

No Grafana runs here and promtool cannot check a dashboard, so: every metric name is parsed out of every
expression (targets and template variables) and compared with the names `Metrics(registry)` renders (every
family is exposed from the start, HELP and TYPE at least), counters with `_total` and histograms with
`_bucket`/`_sum`/`_count`. A name that does not exist fails here. That the expressions are valid PromQL is
checked by a real Prometheus in tests/integration/test_metrics_prometheus.py, and that a live sidecar
serves these names in tests/integration/test_metrics_traffic.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from proxy.telemetry.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "horizon-sidecar.json"
# A metric name in PromQL: our prefix, then name characters (label names and functions never start so).
METRIC_NAME = re.compile(r"\b(sidecar_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    found = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def exposed_names() -> set[str]:
    """Every sample name a sidecar's registry can expose, from a fresh `Metrics` (no traffic needed)."""
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def test_every_query_names_only_exposed_metrics() -> None:
    board = dashboard()
    named = {name for expr in expressions(board) for name in METRIC_NAME.findall(expr)}
    exposed = exposed_names()
    assert sorted(named - exposed) == []
    # And the dashboard covers issue 18's families and the resilience ones it was asked to show.
    for family in ("sidecar_requests_total", "sidecar_request_duration_seconds_bucket",
                   "sidecar_proxy_overhead_seconds_bucket", "sidecar_circuit_breaker_state", "sidecar_retries_total",
                   "sidecar_rate_limited_total", "sidecar_limits_rejected_total", "sidecar_endpoints",
                   "sidecar_downstream_bytes_total", "sidecar_upstream_bytes_total",
                   "sidecar_downstream_connections_total", "sidecar_upstream_connections_total"):
        assert family in named, family


def test_the_name_check_would_catch_a_typo() -> None:
    assert METRIC_NAME.findall('rate(sidecar_request_total{code=~"5.."}[5m])') == ["sidecar_request_total"]
    assert "sidecar_request_total" not in exposed_names()


def test_dashboard_shape() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in ("request rate", "error rate", "p50", "p99", "overhead", "breaker", "retries", "rate-limited",
                   "bulkhead", "endpoints by state"):
        assert wanted in titles, wanted
    # Latency panels ask Grafana for exemplars (the trace ids Prometheus stores with exemplar-storage).
    latency = [t for p in panels if "p99" in p["title"].lower() for t in p["targets"]]
    assert latency and all(t.get("exemplar") for t in latency)
    endpoint_states = next(p for p in panels if p["title"].lower() == "endpoints by state")
    assert "state" in endpoint_states["targets"][0]["expr"]
