"""Graceful drain of a real `sidecar run` process: SIGTERM and POST /shutdown with slow requests in
flight, `drain_delay`, idle keep-alive connections closed, exit 0."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]

SLOW_UPSTREAM = """
import asyncio, sys
from aiohttp import web
async def slow(request):
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="done")
app = web.Application(); app.router.add_get("/{t:.*}", slow)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def start(tmp_path: Path, drain: str) -> tuple[subprocess.Popen[str], subprocess.Popen[str], int, int]:
    upstream_port, port, admin = free_port(), free_port(), free_port()
    script = tmp_path / "slow.py"
    script.write_text(SLOW_UPSTREAM)
    upstream = subprocess.Popen([sys.executable, str(script), str(upstream_port)], text=True)
    path = tmp_path / "drain.yaml"
    path.write_text(
        f"admin: {{address: 127.0.0.1:{admin}}}\n{drain}\n"
        f"listeners: [{{name: outbound, address: '127.0.0.1:{port}', "
        "routes: [{name: all, match: {prefix: /}, cluster: slow}]}]\n"
        f"clusters: [{{name: slow, endpoints: ['127.0.0.1:{upstream_port}']}}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(path)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    proc.stderr.readline()  # the "listening:" line: bound
    for _ in range(50):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/?s=0", timeout=2):
                break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    return proc, upstream, port, admin


def ready_status(admin: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_sigterm_finishes_slow_requests_then_exits_zero(tmp_path: Path) -> None:
    proc, upstream, port, admin = start(tmp_path, "drain_timeout: 10s")
    try:
        results: list[tuple[int, bytes]] = []

        def slow_request() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/?s=1.5")
            response = conn.getresponse()
            results.append((response.status, response.read()))

        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        idle.request("GET", "/?s=0")
        idle.getresponse().read()  # an idle keep-alive connection: closed by the drain
        threads = [threading.Thread(target=slow_request) for _ in range(5)]
        for thread in threads:
            thread.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert ready_status(admin) == 503  # draining, while the slow requests still run
        for thread in threads:
            thread.join(10)
        assert results == [(200, b"done")] * 5
        assert proc.wait(timeout=10) == 0
        idle.request("GET", "/?s=0")
        try:
            idle.getresponse()
            raise AssertionError("the idle keep-alive connection should have been closed")
        except (http.client.RemoteDisconnected, ConnectionError):
            pass
    finally:
        for p in (proc, upstream):
            if p.poll() is None:
                p.kill()


def test_shutdown_endpoint_with_drain_delay_keeps_accepting_first(tmp_path: Path) -> None:
    proc, upstream, port, admin = start(tmp_path, "drain_delay: 1s\ndrain_timeout: 5s")
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{admin}/shutdown", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        assert ready_status(admin) == 503
        # within drain_delay, new connections are still served (callers may not know yet)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?s=0", timeout=5) as response:
            assert response.read() == b"done"
        assert proc.wait(timeout=10) == 0
    finally:
        for p in (proc, upstream):
            if p.poll() is None:
                p.kill()
