"""The HTTP/2 and gRPC benchmark must not rot: its quick mode runs end to end (h2load through nginx with
`listen ... http2` and through the sidecar, then gRPC unary calls through nginx's `grpc_pass` and the sidecar's
`protocol: http2` cluster to a grpcio upstream and to the static nginx one) and every request succeeded with a
2xx.

No speed is asserted (BENCHMARKS.md: benchmarks are not tests). The full run takes minutes and is run by
hand (`python -m benchmarks.http2`), never here.
"""

from __future__ import annotations

import importlib.util
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
@pytest.mark.skipif(_which("nginx") is None or _which("h2load") is None, reason="needs nginx and h2load")
@pytest.mark.skipif(importlib.util.find_spec("grpc") is None, reason="needs grpcio (the gRPC upstream)")
def test_quick_http2_writes_results(tmp_path: Path) -> None:
    # As in test_compare_smoke: measure ./scripts/test's compiled copy when it names one, else the source.
    compiled = os.environ.get("SIDECAR_COMPILED_TREE")
    build = [] if compiled else ["--interpreted"]
    done = subprocess.run([sys.executable, "-m", "benchmarks.http2", "--quick", "--out", str(tmp_path), *build],
                          cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(tmp_path.glob("*-http2-quick.json"))
    assert len(files) == 1, (files, done.stderr[-2000:])
    results = json.loads(files[0].read_text())
    assert results["mode"] == "quick"
    assert results["skipped"] == {}, results["skipped"]
    scenarios = results["scenarios"]
    assert set(scenarios) == {"http2-c1-m100", "http2-c50-m10", "grpc-c1-m100", "grpc-c10-m10",
                              "grpc-static-c1-m100", "grpc-static-c10-m10"}
    for name, targets in scenarios.items():
        expected = {"nginx", "sidecar"} | ({"direct"} if name.startswith("grpc") else set())
        assert set(targets) == expected, (name, targets)
        for target, t in targets.items():
            assert t["requests"] > 0, (name, target)
            if target == "nginx" and name.startswith("grpc-static"):
                # nginx's grpc_pass in front of an nginx upstream that answers before reading the body loses a
                # call now and then ("upstream sent frame for unknown stream" in its error log): its defect,
                # not the rig's. The sidecar and the upstream itself must still answer every call.
                continue
            # Every stream succeeded with a 2xx (h2load's own count): both peers proxied every call.
            assert t["failed"] == 0 and t["non_2xx"] == 0, (name, target, t)
    # Quick runs are too short for CPU ticks to be sure of a ratio; throughput always has one.
    assert all("rps" in ratios for ratios in results["summary"].values()), results["summary"]
    assert results["targets"][0]["target"] == ">= 5,000"
    assert results["targets"][0]["value"] > 0
    table = (tmp_path / "latest-http2-quick.md").read_text()
    assert table.startswith("## HTTP/2 and gRPC: sidecar vs nginx")
    assert "| grpc grpcio h2load -c 1 -m 100 | sidecar |" in done.stdout
    assert "| grpc static h2load -c 1 -m 100 | sidecar |" in done.stdout
    assert "| http2 h2load -c 1 -m 100 | nginx |" in done.stdout
    if compiled:
        assert results["sidecar_build"].startswith("compiled"), results["sidecar_build"]
    else:
        assert results["sidecar_build"].startswith("interpreted")
