"""A real Prometheus server (2.42, `--enable-feature=exemplar-storage`) scrapes the sidecar's admin port, which
answers it in OpenMetrics; the trace id of a sampled request comes back from its `/api/v1/query_exemplars`.
Once against one sidecar process, once against a supervisor with two workers (whose `/metrics` merges the
workers' expositions, exemplars included). Every wait is bounded; skipped only when the binary is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port
from tests.deploy.test_grafana import dashboard, expressions
from tests.integration.test_workers import Supervised, listener_port, start, wait_ready
from tests.integration.upstreams import Upstream, start_upstream

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
UNSAMPLED = "00-0123456789abcdef0123456789abcdef-00f067aa0ba902b7-00"


def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package `prometheus` provides /usr/bin/prometheus)")
    return binary


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, admin_port: int) -> AsyncIterator[str]:
    """A Prometheus scraping 127.0.0.1:`admin_port` every second; yields its base URL."""
    binary = prometheus_binary()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: sidecar
    metrics_path: /metrics
    static_configs: [{{targets: ["127.0.0.1:{admin_port}"]}}]
""")
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def exemplar_trace_ids(session: aiohttp.ClientSession, base: str, query: str) -> set[str]:
    now = time.time()
    params = {"query": query, "start": str(now - 600), "end": str(now + 60)}
    try:
        async with session.get(f"{base}/api/v1/query_exemplars", params=params) as response:
            if response.status != 200:
                return set()
            answer: dict[str, Any] = await response.json()
    except aiohttp.ClientError:
        return set()  # not listening yet
    return {exemplar["labels"].get("trace_id", "") for series in answer.get("data", [])
            for exemplar in series.get("exemplars", [])}


async def target_health(session: aiohttp.ClientSession, base: str) -> str:
    try:
        async with session.get(f"{base}/api/v1/targets") as response:
            targets = (await response.json())["data"]["activeTargets"]
    except (aiohttp.ClientError, KeyError):
        return "prometheus not answering"
    return "; ".join(f"{t['health']} {t.get('lastError', '')}" for t in targets) or "no targets"


async def send_traced(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for traceparent in (TRACEPARENT, UNSAMPLED):
            async with session.get(url, headers={"traceparent": traceparent}) as response:
                assert response.status == 200
                await response.read()


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in as Grafana would (all values selected)."""
    expr = expr.replace("$__rate_interval", "1m").replace("$listener", ".*").replace("$cluster", ".*")
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", expr)
    return f"group by ({match[2]}) ({match[1]})" if match else expr


async def assert_dashboard_queries_run(session: aiohttp.ClientSession, base: str) -> None:
    for expr in expressions(dashboard()):
        async with session.get(f"{base}/api/v1/query", params={"query": as_promql(expr)}) as response:
            answer = await response.json()
        assert answer["status"] == "success", (expr, answer)
        assert not answer.get("warnings"), (expr, answer)


async def assert_prometheus_stores_the_exemplar(tmp_path: Path, admin_port: int, timeout: float = 45,
                                                queries: bool = False) -> None:
    async with prometheus(tmp_path, admin_port) as base, aiohttp.ClientSession() as session:
        deadline = time.monotonic() + timeout
        found: set[str] = set()
        while time.monotonic() < deadline:
            found = await exemplar_trace_ids(session, base, "sidecar_request_duration_seconds_bucket")
            if TRACE_ID in found:
                break
            await asyncio.sleep(0.5)
        assert TRACE_ID in found, f"no exemplar after {timeout}s; targets: {await target_health(session, base)}"
        # Only the sampled request left one; the overhead histogram carries it too.
        assert found == {TRACE_ID}
        assert TRACE_ID in await exemplar_trace_ids(session, base, "sidecar_proxy_overhead_seconds_bucket")
        assert "up" in await target_health(session, base)
        if queries:
            # The dashboard's PromQL parses and runs on a real Prometheus holding the sidecar's series.
            await assert_dashboard_queries_run(session, base)


async def test_prometheus_scrapes_exemplars_from_one_process(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prometheus_binary()
    upstream = await start_upstream()
    running = await sidecar(f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes: [{{name: api, match: {{prefix: /}}, cluster: backend}}]
    clusters:
      - name: backend
        endpoints: ["{upstream.address}"]
    """)
    await send_traced(running.url("/api/x"))
    await assert_prometheus_stores_the_exemplar(tmp_path, running.admin_port, queries=True)
    await upstream.stop()


async def test_prometheus_scrapes_exemplars_through_the_workers_merge(tmp_path: Path) -> None:
    prometheus_binary()
    upstream: Upstream = await start_upstream()
    async for supervised in start(tmp_path, upstream):
        sup: Supervised = supervised
        port = listener_port(await sup.first_line())
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, sup)
        await send_traced(f"http://127.0.0.1:{port}/x")
        await assert_prometheus_stores_the_exemplar(tmp_path, sup.admin)
    await upstream.stop()
