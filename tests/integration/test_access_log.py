"""The access log through real sockets: a proxied 200 field by field, local replies, a retried request, a
drained one, SIGUSR1 reopening after a rename (one process and workers), the text format, sampling, a
reload that changes the log, and `--log-format json`."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import free_port
from tests.integration.raw import RawUpstream, outbound_config
from tests.integration.test_resilience_retries import FAST, config, sequence
from tests.integration.upstreams import start_upstream

REPO = Path(__file__).resolve().parents[2]
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)
ISO_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def read_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    """The file's first `count` lines, once written (the writer thread writes them a moment after)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) >= count, f"{path}: {len(lines)} line(s) of {count}: {lines}"
            return lines[:count]
        time.sleep(0.02)


async def wait_lines(path: Path, count: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in await asyncio.to_thread(read_lines, path, count)]


async def get(url: str, **kwargs: Any) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, session.get(url, **kwargs) as reply:
        await reply.read()
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}


def access_log(extra: str = "") -> str:
    # A relative path: it resolves against the config file's directory (the test's tmp dir).
    return f"access_log: {{path: access.log{extra}}}"


async def test_a_proxied_request_field_by_field(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address, top_extra=access_log()))
    before = time.time()
    status, headers = await get(running.url("/api/x?a=1"), headers={"User-Agent": "probe/1", "X-Request-Id": "r-1",
                                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert status == 200
    [line] = await wait_lines(tmp_path / "access.log", 1)
    assert list(line) == ["start_time", "method", "authority", "path", "status", "duration_ms", "upstream_ms",
                          "sidecar_ms", "bytes_in", "bytes_out", "listener", "route", "cluster", "endpoint",
                          "attempts", "cause", "reset", "request_id", "trace_id", "span_id", "sampled",
                          "peer_identity", "api_client", "user_agent"]
    assert re.match(ISO_MS, line["start_time"])
    started = time.mktime(time.strptime(line["start_time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= started <= time.time()
    assert line["method"] == "GET"
    assert line["authority"] == f"127.0.0.1:{running.port()}"
    assert line["path"] == "/api/x?a=1"
    assert line["status"] == 200
    assert line["duration_ms"] > 0 and 0 < line["upstream_ms"] <= line["duration_ms"]
    assert abs(line["sidecar_ms"] - (line["duration_ms"] - line["upstream_ms"])) < 0.01
    assert line["bytes_in"] == 0
    assert line["bytes_out"] == int(headers["content-length"]) > 0
    assert (line["listener"], line["route"], line["cluster"]) == ("outbound", "all", "backend")
    assert line["endpoint"] == upstream.address
    assert line["attempts"] == 1
    assert line["cause"] is None and line["reset"] is False
    assert line["request_id"] == "r-1" == headers["x-request-id"]
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert line["span_id"] and line["span_id"] != "00f067aa0ba902b7"
    assert line["sampled"] is True
    assert line["peer_identity"] is None and line["api_client"] is None
    assert line["user_agent"] == "probe/1"
    await upstream.stop()


async def test_local_replies_name_their_cause(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running = await sidecar(f"""
    admin: {{address: "127.0.0.1:0"}}
    {access_log()}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - {{name: api, match: {{prefix: /api}}, cluster: empty}}
    clusters:
      - {{name: empty, endpoints: []}}
    """)
    assert (await get(running.url("/nowhere")))[0] == 404
    status, headers = await get(running.url("/api/y"))
    assert status == 503
    no_route, unavailable = await wait_lines(tmp_path / "access.log", 2)
    assert (no_route["status"], no_route["cause"], no_route["route"], no_route["attempts"]) == (
        404, "destination_not_found", None, 0)
    assert no_route["path"] == "/nowhere" and no_route["upstream_ms"] == 0
    assert (unavailable["status"], unavailable["cause"], unavailable["route"], unavailable["cluster"]) == (
        503, "destination_unavailable", "api", "empty")
    assert unavailable["request_id"] == headers["x-request-id"]
    assert unavailable["endpoint"] is None


async def test_a_retried_request(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], {FAST}") + access_log())
    assert (await get(running.url("/again")))[0] == 200
    [line] = await wait_lines(tmp_path / "access.log", 1)
    assert (line["status"], line["attempts"], line["cause"], line["endpoint"]) == (200, 2, None, upstream.address)
    await upstream.stop()


async def test_text_format(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address, top_extra=access_log(", format: text")))
    _status, headers = await get(running.url("/t?q=1"), headers={"User-Agent": "probe/2"})
    [line] = await asyncio.to_thread(read_lines, tmp_path / "access.log", 1)
    assert line.startswith("[")
    assert f'] "GET /t?q=1" 200 - 0 {headers["content-length"]} ' in line
    assert f'"probe/2" "{headers["x-request-id"]}" "127.0.0.1:{running.port()}" "{upstream.address}" ' in line
    assert " outbound all backend 1 - " in line
    await upstream.stop()


async def test_success_sample_zero_still_logs_errors(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(200, 200, 500, 200)).start()
    running = await sidecar(outbound_config(upstream.address, top_extra=access_log(", success_sample: 0")))
    statuses = [(await get(running.url(f"/{n}")))[0] for n in range(4)]
    assert statuses == [200, 200, 500, 200]
    assert (await get(running.url("/x"), headers={"Host": "bad host"}))[0] == 400
    lines = await wait_lines(tmp_path / "access.log", 2)
    # The 400 is the codec's refusal of the bad Host: it has no route and (the codec keeps none) no path.
    assert [(line["status"], line["path"], line["cause"]) for line in lines] == [
        (500, "/2", None), (400, None, "http_request_error")]
    await asyncio.sleep(0.2)
    assert len((tmp_path / "access.log").read_text().splitlines()) == 2
    await upstream.stop()


async def test_a_reload_moves_the_log(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address, top_extra=access_log()))
    await get(running.url("/one"))
    app = running.app
    app.loaded.path.write_text(app.loaded.path.read_text().replace("path: access.log", "path: second.log"))
    assert await app.reload()
    await get(running.url("/two"))
    [first] = await wait_lines(tmp_path / "access.log", 1)
    [second] = await wait_lines(tmp_path / "second.log", 1)
    assert (first["path"], second["path"]) == ("/one", "/two")
    assert all(listener.sinks == (app.access_log,) for listener in app.listeners.values())
    # Removing `access_log:` removes the sink: requests pay nothing for it.
    app.loaded.path.write_text(app.loaded.path.read_text().replace("access_log: {path: second.log}", ""))
    assert await app.reload()
    assert app.access_log is None
    assert all(listener.sinks == () for listener in app.listeners.values())  # metrics alone (called natively)
    await upstream.stop()


async def test_a_listener_added_by_a_reload_logs_too(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address, top_extra=access_log()))
    app = running.app
    second = ('  - {name: second, address: "127.0.0.1:0", routes: [{name: other, match: {prefix: /}, '
              'cluster: backend}]}\nclusters:')
    app.loaded.path.write_text(app.loaded.path.read_text().replace("\nclusters:", f"\n{second}"))
    assert await app.reload()
    assert (await get(running.url("/added", listener="second")))[0] == 200
    [line] = await wait_lines(tmp_path / "access.log", 1)
    assert (line["listener"], line["route"], line["path"]) == ("second", "other", "/added")
    await upstream.stop()


async def test_a_reload_to_a_file_that_cannot_be_opened_is_refused(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address, top_extra=access_log()))
    app = running.app
    sink = app.access_log
    app.loaded.path.write_text(app.loaded.path.read_text().replace("path: access.log", "path: no/such/dir.log"))
    assert not await app.reload()
    assert app.access_log is sink
    await get(running.url("/still"))
    [line] = await wait_lines(tmp_path / "access.log", 1)
    assert line["path"] == "/still"
    await upstream.stop()


def test_run_names_an_access_log_it_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(outbound_config("127.0.0.1:1", top_extra="access_log: {path: no/such/dir.log}")))
    done = subprocess.run([sys.executable, "-m", "proxy", "run", "-c", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1
    assert f"cannot start: access_log.path {tmp_path}/no/such/dir.log: No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


# -- the process: drain, SIGUSR1, --log-format json --------------------------------------------------------


class _Slow(http.server.BaseHTTPRequestHandler):
    """Answers after `delay` seconds (`/slow`) or at once, and says when a request arrived."""

    delay = 1.5
    arrived = threading.Event()

    def do_GET(self) -> None:
        type(self).arrived.set()
        if self.path.startswith("/slow"):
            time.sleep(self.delay)
        body = b"done\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def slow_upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def run_sidecar(tmp_path: Path, upstream_port: int, *extra_args: str, log: str = "access.log",
                ) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    """`sidecar run` in a subprocess with a file access log; yields it, its listener port and its first
    log line."""
    port = free_port()
    path = tmp_path / "run.yaml"
    path.write_text(
        f"admin: {{address: 127.0.0.1:{free_port()}}}\n"
        "drain_timeout: 10s\n"
        f"access_log: {{path: {log}}}\n"
        "listeners:\n"
        f"  - name: outbound\n    address: 127.0.0.1:{port}\n"
        "    routes: [{name: all, match: {prefix: /}, cluster: app}]\n"
        f"clusters: [{{name: app, endpoints: [\"127.0.0.1:{upstream_port}\"]}}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(path), *extra_args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        yield proc, port, first
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def fetch(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        response.read()
        return int(response.status)


def test_a_request_in_flight_during_the_drain_is_logged(tmp_path: Path) -> None:
    _Slow.arrived.clear()
    with slow_upstream() as upstream_port, run_sidecar(tmp_path, upstream_port) as (proc, port, first):
        assert f"outbound=127.0.0.1:{port}" in first
        result: list[int] = []
        client = threading.Thread(target=lambda: result.append(fetch(port, "/slow")))
        client.start()
        assert _Slow.arrived.wait(5)
        os.kill(proc.pid, signal.SIGTERM)
        client.join(10)
        assert result == [200]
        assert proc.wait(timeout=10) == 0
    [line] = [json.loads(text) for text in read_lines(tmp_path / "access.log", 1, timeout=0)]
    assert (line["path"], line["status"], line["reset"]) == ("/slow", 200, False)
    assert line["duration_ms"] >= _Slow.delay * 1000 * 0.9


def _reopen_after_rename(tmp_path: Path, *extra_args: str) -> None:
    with slow_upstream() as upstream_port, run_sidecar(tmp_path, upstream_port, *extra_args) as (proc, port, _):
        assert fetch(port, "/before") == 200
        read_lines(tmp_path / "access.log", 1)
        (tmp_path / "access.log").rename(tmp_path / "access.log.1")  # logrotate's `create` mode
        os.kill(proc.pid, signal.SIGUSR1)
        # The signal reaches the writers asynchronously: retry (bounded) until a line lands in the new file
        # (the reopen creates it empty), then give every worker a moment to reopen too.
        fresh = tmp_path / "access.log"
        deadline = time.monotonic() + 10
        while not (fresh.exists() and fresh.read_text()) and time.monotonic() < deadline:
            assert fetch(port, "/after") == 200
            time.sleep(0.1)
        time.sleep(0.5)
        for _ in range(20):  # a new connection each: with workers, the kernel spreads them
            assert fetch(port, "/later") == 200
        read_lines(fresh, 21)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    rotated = [json.loads(text)["path"] for text in (tmp_path / "access.log.1").read_text().splitlines()]
    new = [json.loads(text)["path"] for text in fresh.read_text().splitlines()]
    assert rotated[0] == "/before" and set(rotated[1:]) <= {"/after"}
    assert new.count("/later") == 20 and set(new) == {"/after", "/later"}


def test_sigusr1_reopens_the_file_after_a_rename(tmp_path: Path) -> None:
    _reopen_after_rename(tmp_path)


def test_sigusr1_reaches_every_worker(tmp_path: Path) -> None:
    _reopen_after_rename(tmp_path, "--workers", "2")


def test_log_format_json(tmp_path: Path) -> None:
    with slow_upstream() as upstream_port, \
            run_sidecar(tmp_path, upstream_port, "--log-format", "json") as (proc, port, first):
        line = json.loads(first)
        assert line["level"] == "info" and line["logger"] == "proxy.runtime"
        assert f"outbound=127.0.0.1:{port}" in line["message"] and "admin 127.0.0.1:" in line["message"]
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        for rest in proc.stderr.read().splitlines():
            json.loads(rest)


async def test_log_lines_about_a_request_carry_its_ids(sidecar, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    refused = f"127.0.0.1:{free_port()}"
    running = await sidecar(config([refused], f"attempts: 1, on: [connect-failure], {FAST}") + access_log())
    with caplog.at_level(logging.INFO, logger="proxy.stages.attempt"):
        status, headers = await get(running.url("/down"), headers={
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert status == 503
    [line] = await wait_lines(tmp_path / "access.log", 1)
    assert (line["cause"], line["attempts"]) == ("connection_refused", 2)
    [given_up] = [r for r in caplog.records if "retries given up" in r.getMessage()]
    assert given_up.request_id == headers["x-request-id"] == line["request_id"]  # type: ignore[attr-defined]
    assert given_up.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"  # type: ignore[attr-defined]
    assert f"request_id={line['request_id']} trace_id=4bf92f3577b34da6a3ce929d0e0e4736" in given_up.getMessage()
