"""The benchmark rig must not rot: its quick mode runs end to end, and every micro-benchmark runs.

No speed is asserted (CI machines are slow and shared; BENCHMARKS.md: benchmarks are not tests). The
full comparison takes minutes and is run by hand (`python -m benchmarks.compare`), never here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.micro.__main__ import benchmarks

REPO = Path(__file__).resolve().parents[2]


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/local/sbin")


@pytest.mark.timeout(120)
@pytest.mark.skipif(_which("nginx") is None or _which("wrk") is None, reason="needs nginx and wrk")
def test_quick_compare_writes_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--quick", "--only", "sidecar,nginx", "--skip-latency",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(tmp_path.glob("*-quick.json"))
    assert len(files) == 1, (files, done.stderr[-2000:])
    results = json.loads(files[0].read_text())
    expected = {"machine", "mode", "pinning", "tools", "throughput", "cpu", "memory", "targets", "skipped"}
    assert expected <= results.keys()
    assert results["mode"] == "quick"
    assert {"nproc", "cpu_model", "kernel", "date", "host"} <= results["machine"].keys()
    targets = results["throughput"]["targets"]
    assert {"direct", "nginx", "sidecar"} <= targets.keys()
    for target in targets.values():
        assert {"rps_median", "rps_runs", "requests", "vcpu_s_per_1000"} <= target.keys()
        assert target["requests"] > 0
    assert "sidecar/nginx" in results["throughput"]["ratios"]
    assert "direct_within_10pct_of_nginx" in results["throughput"]
    assert {"sidecar", "nginx", "sidecar/nginx"} <= results["cpu"]["per_target"].keys()
    memory = results["memory"]
    assert {"idle_rss_mb", "idle_connections", "upload", "download"} <= memory.keys()
    assert memory["idle_connections"]["opened"] > 0
    for direction in ("upload", "download"):
        assert memory[direction]["status"] == 200, memory[direction]
    assert "latency" in results["skipped"]
    assert (tmp_path / "latest-quick.md").read_text().startswith("## Sidecar vs peers")
    assert "| sidecar |" in done.stdout


@pytest.mark.parametrize("module", benchmarks())
def test_micro_benchmark_runs(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--iterations", "20"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ns/op" in done.stdout
