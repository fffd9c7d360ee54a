"""The mTLS hop benchmark must not rot: its quick mode runs end to end (two sidecars over mTLS, two nginx
servers over mTLS, the same without TLS, and the handshake benchmark once) and every request answered 200.

No speed is asserted (BENCHMARKS.md: benchmarks are not tests). The full run takes minutes and is run by
hand (`python -m benchmarks.mtls`), never here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/local/sbin")


@pytest.mark.timeout(120)
@pytest.mark.skipif(_which("nginx") is None or _which("wrk") is None, reason="needs nginx and wrk")
def test_quick_mtls_hop_writes_results(tmp_path: Path) -> None:
    # As in test_compare_smoke: measure ./scripts/test's compiled copy when it names one, else the source.
    compiled = os.environ.get("SIDECAR_COMPILED_TREE")
    build = [] if compiled else ["--interpreted"]
    done = subprocess.run([sys.executable, "-m", "benchmarks.mtls", "--quick", "--out", str(tmp_path), *build],
                          cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(tmp_path.glob("*-mtls-quick.json"))
    assert len(files) == 1, (files, done.stderr[-2000:])
    results = json.loads(files[0].read_text())
    assert results["mode"] == "quick"
    assert results["skipped"] == {}, results["skipped"]
    targets = results["throughput"]["targets"]
    assert set(targets) == {"direct", "sidecar", "nginx", "sidecar-plain", "nginx-plain"}
    for name, target in targets.items():
        assert target["requests"] > 0, name
        # Every answer was a 200: B accepted A's certificate and A accepted B's, for both peers.
        assert target["non_2xx"] == 0, (name, target)
        if name != "direct":
            assert target["vcpu_s_per_1000_a"] > 0 and target["vcpu_s_per_1000_b"] > 0, (name, target)
    # The sidecars really spoke TLS to each other: A's pools made full handshakes to B.
    assert results["sidecar_tls_handshakes"]["full_handshakes"] > 0
    assert {"cpu sidecar/nginx", "rps sidecar/nginx", "sidecar per proxy / istio", "mtls adds, sidecar",
            "mtls adds, nginx"} <= results["summary"].keys()
    handshakes = results["handshakes"]
    assert handshakes.get("per_second_on_one_core", 0) > 0 and handshakes["failed"] == 0, handshakes
    assert {t["target"] for t in results["targets"]} >= {"<= 2.5x", ">= 1,000"}
    table = (tmp_path / "latest-mtls-quick.md").read_text()
    assert table.startswith("## mTLS hop: sidecar vs nginx")
    assert "| sidecar |" in done.stdout and "| nginx |" in done.stdout
    assert "on one core" in done.stdout
    if compiled:
        assert results["sidecar_build"].startswith("compiled"), results["sidecar_build"]
    else:
        assert results["sidecar_build"].startswith("interpreted")
