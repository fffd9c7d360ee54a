"""Issue 18's metrics through real sockets: the sidecar's own overhead, connections opened, and bytes in and
out per listener and per cluster, compared with what the client and the upstream put on the wire; the
exposition of a live sidecar in both formats, checked by promtool; the dashboard's queries name only families
a live sidecar exposes.

What the byte counters count: every byte read from and written to the socket after TLS decryption, at the
HTTP/1.1 layer: request and response heads, bodies, chunked framing, and tunnelled bytes. Not TCP/IP or TLS
record overhead, not the admin port, not health check probes.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import httptools
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_websocket import WsUpstream
from tests.unit.telemetry.test_metrics import openmetrics_as_text_format

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "horizon-sidecar.json"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
UPSTREAM_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: text/plain\r\n\r\nhello world"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class CountingUpstream:
    """An HTTP/1.1 upstream on asyncio streams that counts every byte it reads and writes (keep-alive)."""

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.connections = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> CountingUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream = self

        class Complete:
            done = 0

            def on_message_complete(self) -> None:
                self.done += 1

        complete = Complete()
        parser = httptools.HttpRequestParser(complete)
        answered = 0
        while data := await reader.read(65536):
            upstream.received += len(data)
            parser.feed_data(data)
            while answered < complete.done:
                answered += 1
                writer.write(UPSTREAM_ANSWER)
                upstream.sent += len(UPSTREAM_ANSWER)
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def config(upstream: str) -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - {{name: api, match: {{prefix: /api}}, cluster: backend}}
    clusters:
      - name: backend
        endpoints: ["{upstream}"]
    """


async def exchange(port: int, request: bytes) -> bytes:
    """Send `request` (which asks for `Connection: close`) on a new connection; every byte until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    return answer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(session: aiohttp.ClientSession, url: str, accept: str | None = None) -> str:
    async with session.get(url, headers={"Accept": accept} if accept else {}) as response:
        assert response.status == 200
        return await response.text()


async def test_bytes_connections_and_overhead_match_the_wire(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await CountingUpstream().start()
    running = await sidecar(config(f"127.0.0.1:{upstream.port}"))
    port = running.port()
    requests = [
        b"GET /api/one HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n",
        b"POST /api/two HTTP/1.1\r\nhost: shop\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    ]
    answers = [await exchange(port, request) for request in requests]
    assert all(answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello world") for answer in answers)
    want = {
        ("sidecar_downstream_bytes_total", (("direction", "rx"), ("listener", "outbound"))): sum(map(len, requests)),
        ("sidecar_downstream_bytes_total", (("direction", "tx"), ("listener", "outbound"))): sum(map(len, answers)),
        ("sidecar_upstream_bytes_total", (("cluster", "backend"), ("direction", "rx"))): upstream.sent,
        ("sidecar_upstream_bytes_total", (("cluster", "backend"), ("direction", "tx"))): upstream.received,
        ("sidecar_downstream_connections_total", (("listener", "outbound"),)): 2,
        ("sidecar_upstream_connections_total", (("cluster", "backend"),)): upstream.connections,
        ("sidecar_proxy_overhead_seconds_count", (("listener", "outbound"), ("route", "api"))): 2,
        ("sidecar_downstream_connections", (("listener", "outbound"),)): 0,
    }
    assert upstream.connections == 1  # the second request reused the pooled connection
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 5  # the closes are seen by the sidecar a moment after the client's EOF
        while True:
            got = samples(await scrape(session, running.admin_url("/metrics")))
            if all(got.get(key) == value for key, value in want.items()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert {key: got.get(key) for key in want} == want
    # The overhead is the sidecar's own time: on loopback, well under the 10 ms top bucket.
    overhead = (("le", "0.01"), ("listener", "outbound"), ("route", "api"))
    assert got[("sidecar_proxy_overhead_seconds_bucket", overhead)] == 2
    await upstream.stop()


async def test_a_keep_alive_connection_reports_bytes_per_response(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await CountingUpstream().start()
    running = await sidecar(config(f"127.0.0.1:{upstream.port}"))
    request = b"GET /api/x HTTP/1.1\r\nhost: shop\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port())
    writer.write(request)
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
        body = await reader.readexactly(length)
    async with aiohttp.ClientSession() as session:
        got = samples(await scrape(session, running.admin_url("/metrics")))
    # Still open, yet counted: the connection reported when its response ended.
    assert got[("sidecar_downstream_connections", (("listener", "outbound"),))] == 1
    assert got[("sidecar_downstream_bytes_total", (("direction", "rx"), ("listener", "outbound")))] == len(request)
    assert got[("sidecar_downstream_bytes_total", (("direction", "tx"), ("listener", "outbound")))] == len(
        head + body)
    writer.close()
    await upstream.stop()


async def test_live_exposition_passes_promtool_in_both_formats(sidecar) -> None:  # type: ignore[no-untyped-def]
    promtool = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus` provides /usr/bin/promtool)")
    upstream = await CountingUpstream().start()
    running = await sidecar(config(f"127.0.0.1:{upstream.port}"))
    async with aiohttp.ClientSession() as session:
        for headers in ({"traceparent": TRACEPARENT}, {}):
            async with session.get(running.url("/api/x"), headers=headers) as response:
                assert response.status == 200
        text = await scrape(session, running.admin_url("/metrics"))
        openmetrics = await scrape(session, running.admin_url("/metrics"), OPENMETRICS)
    assert "trace_id" not in text
    assert '# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"}' in openmetrics
    list(openmetrics_families(openmetrics))  # prometheus_client's strict OpenMetrics parser accepts it
    for body in (text.encode(), openmetrics_as_text_format(openmetrics.encode())):
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert check.returncode == 0, (check.stdout + check.stderr).decode()
    await upstream.stop()


METRIC_NAME = re.compile(r"\b(sidecar_[a-z0-9_]+)\b")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
              for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "query"]
    return [e for e in exprs if e]


async def test_dashboard_queries_name_only_exposed_families(sidecar) -> None:  # type: ignore[no-untyped-def]
    # promtool cannot check a dashboard: every metric name its PromQL mentions must be one a live sidecar
    # exposes (after a request, so every family of the request path has series).
    upstream = await CountingUpstream().start()
    running = await sidecar(config(f"127.0.0.1:{upstream.port}"))
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url("/api/x")) as response:
            assert response.status == 200
        text = await scrape(session, running.admin_url("/metrics"))
    exposed = set(re.findall(r"^# TYPE (\w+) ", text, flags=re.MULTILINE))
    for family in text_string_to_metric_families(text):
        exposed |= {sample.name for sample in family.samples}
    exprs = dashboard_expressions()
    assert len(exprs) >= 10
    named = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert named, "no sidecar_* names in the dashboard's queries"
    assert sorted(named - exposed) == []
    await upstream.stop()


async def test_tunnelled_bytes_count_when_the_tunnel_ends(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await WsUpstream().start()
    running = await sidecar(config(f"127.0.0.1:{upstream.port}").replace("prefix: /api", "prefix: /"))
    big = bytes(range(256)) * 4096  # 1 MiB each way
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(running.url("/ws"), timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
            await ws.receive(timeout=2)
            await ws.send_bytes(big)
            reply = await ws.receive(timeout=5)
            assert reply.data == b"echo:" + big
            await ws.close()
        deadline = time.monotonic() + 5
        while True:
            got = samples(await scrape(session, running.admin_url("/metrics")))
            if got[("sidecar_downstream_connections", (("listener", "outbound"),))] == 0 or \
                    time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    down = {d: got[("sidecar_downstream_bytes_total", (("direction", d), ("listener", "outbound")))]
            for d in ("rx", "tx")}
    up = {d: got[("sidecar_upstream_bytes_total", (("cluster", "backend"), ("direction", d)))] for d in ("rx", "tx")}
    # Frames are relayed byte for byte; only the handshake heads differ (headers the sidecar adds or drops).
    assert down["rx"] > len(big) and down["tx"] > len(big)
    assert abs(down["rx"] - up["tx"]) < 2048 and abs(down["tx"] - up["rx"]) < 2048, (down, up)
    await upstream.stop()
