"""`sidecar demo` as a newcomer runs it: started as a subprocess, probed with the printed curl commands."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_routes_by_header_splits_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        first = proc.stderr.readline()
        found = re.search(r"outbound=127\.0\.0\.1:(\d+); admin 127\.0\.0\.1:(\d+)", first)
        assert found, first
        port, admin = found.group(1), found.group(2)
        printed = "".join(proc.stdout.readline() for _ in range(8))
        assert f"curl -s -H 'x-version: v2' http://127.0.0.1:{port}/api/v1/campaigns" in printed

        def get(path: str, headers: dict[str, str] | None = None) -> dict[str, str]:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
            with urllib.request.urlopen(request, timeout=5) as response:
                data: dict[str, str] = json.loads(response.read())
                return data

        assert all(get("/api/v1/campaigns", {"x-version": "v2"})["version"] == "v2" for _ in range(10))
        versions = [get("/api/v1/campaigns")["version"] for _ in range(200)]
        assert 140 <= versions.count("v1") <= 198, versions.count("v1")  # 90/10, loosely
        assert versions.count("v2") >= 2
        # The retry: the flaky service fails every other request; the caller only sees the success.
        for _ in range(3):
            assert get("/api/v1/flaky")["x-sidecar-attempt"] in ("1", "2")
        # The breaker: three upstream 503s open it, then the sidecar answers for it.
        proxy_status = []
        for _ in range(5):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/unstable", timeout=5)
            except urllib.error.HTTPError as error:
                assert error.code == 503
                proxy_status.append(error.headers.get("proxy-status") or "")
        assert proxy_status[:3] == ["", "", ""]
        assert all(s.startswith("sidecar; error=destination_unavailable") for s in proxy_status[3:])
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
            metrics = response.read()
        assert b'route="campaign-split"' in metrics
        assert b'sidecar_retries_total{cluster="campaign-v1",result="retried",route="flaky"}' in metrics
        assert b'sidecar_circuit_breaker_state{cluster="campaign-unstable",endpoint="127.0.0.1:' in metrics
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
