"""`sidecar demo` as a newcomer runs it: started as a subprocess, probed with the printed curl commands (the
mTLS ones run as printed)."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
CALLER_ID = "spiffe://cluster.local/ns/default/sa/payment-service"
SERVICE_ID = "spiffe://cluster.local/ns/default/sa/campaign-service"


def printed_block(stdout: IO[str]) -> list[str]:
    """The demo's instructions, up to their last line."""
    lines: list[str] = []
    while not lines or lines[-1] != "Ctrl-C stops everything.":
        line = stdout.readline()
        assert line, lines
        lines.append(line.rstrip("\n"))
    return lines


def command_after(lines: list[str], comment: str) -> list[str]:
    """The command printed on the line after the comment that starts with `comment`, as argv."""
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"# {comment}"))
    command = next(line for line in lines[index + 1:] if not line.strip().startswith("#"))
    return shlex.split(command)


def curl(argv: list[str]) -> str:
    assert argv[0] == "curl"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_routes_splits_retries_breaks_crosses_mtls_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        first = proc.stderr.readline()
        found = re.search(r"outbound=127\.0\.0\.1:(\d+) inbound=127\.0\.0\.1:(\d+); admin 127\.0\.0\.1:(\d+)",
                          first)
        assert found, first
        port, inbound, admin = found.group(1), found.group(2), found.group(3)
        printed = printed_block(proc.stdout)
        assert f"  curl -s -H 'x-version: v2' http://127.0.0.1:{port}/api/v1/campaigns" in printed

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

        # The mTLS hop: out over mutual TLS as payment-service, in through the inbound listener, which hands
        # the service the caller's verified identity (and its own, By=).
        mesh = command_after(printed, "mTLS between sidecars")
        assert mesh == ["curl", "-s", f"http://127.0.0.1:{port}/mesh/api/v1/campaigns"]
        answer = json.loads(curl(mesh))
        assert answer["path"] == "/api/v1/campaigns" and answer["version"] == "v1"
        xfcc = answer["x-forwarded-client-cert"]
        assert xfcc.startswith(f"By={SERVICE_ID};Hash=") and xfcc.endswith(f";URI={CALLER_ID}")
        assert "x-forwarded-client-cert" not in get("/api/v1/campaigns", {"x-version": "v2"})  # plain hop
        # A caller with another identity from the same CA, straight to the inbound listener: 403.
        denied = command_after(printed, "a caller the inbound listener does not allow")
        assert f"https://localhost:{inbound}/api/v1/campaigns" in denied
        certs = Path(denied[denied.index("--cacert") + 1]).parent
        assert Path(denied[denied.index("--cert") + 1]) == certs / "intruder.pem" and certs.is_dir()
        # curl negotiates HTTP/2 by ALPN on the TLS listener (HTTP/1.1 if it cannot): either way a 403.
        head = curl(denied).replace("\r\n", "\n").split("\n\n")[0].lower()
        assert head.startswith(("http/2 403", "http/1.1 403 forbidden")), head
        assert ('proxy-status: sidecar; error=http_request_denied; details="route campaign-v1-mtls: '
                'peer identity not allowed"') in head

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert not certs.exists()  # the throwaway CA goes with the demo
    finally:
        if proc.poll() is None:
            proc.kill()
