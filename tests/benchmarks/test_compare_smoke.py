"""The benchmark rig must not rot: its quick mode runs end to end, the instruction count runs, and every
micro-benchmark runs.

No speed is asserted (CI machines are slow and shared; BENCHMARKS.md: benchmarks are not tests). The
full comparison takes minutes and is run by hand (`python -m benchmarks.compare`), never here.
"""

from __future__ import annotations

import json
import os
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
    # ./scripts/test has compiled a copy already and names it: the run then measures that compiled build as
    # `sidecar` and this tree's source as `sidecar-py`. Without one, compiling here would outlast the test.
    compiled = os.environ.get("SIDECAR_COMPILED_TREE")
    build = [] if compiled else ["--interpreted"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--quick", "--only", "sidecar,nginx,pyfloor,sidecar-py",
         "--skip-latency", "--out", str(tmp_path), *build],
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
    assert {"direct", "nginx", "pyfloor", "sidecar"} <= targets.keys()
    for target in targets.values():
        assert {"rps_median", "rps_runs", "requests", "vcpu_s_per_1000"} <= target.keys()
        assert target["requests"] > 0
    assert {"sidecar/nginx", "sidecar/pyfloor"} <= results["throughput"]["ratios"].keys()
    assert "direct_within_10pct_of_nginx" in results["throughput"]
    assert {"sidecar", "nginx", "pyfloor", "sidecar/nginx", "sidecar/pyfloor"} <= results["cpu"]["per_target"].keys()
    memory = results["memory"]
    assert {"idle_rss_mb", "idle_connections", "upload", "download"} <= memory.keys()
    assert memory["idle_connections"]["opened"] > 0
    for direction in ("upload", "download"):
        assert memory[direction]["status"] == 200, memory[direction]
    assert "latency" in results["skipped"]
    assert (tmp_path / "latest-quick.md").read_text().startswith("## Sidecar vs peers")
    assert "| sidecar |" in done.stdout
    assert "| pyfloor |" in done.stdout
    if compiled:
        assert results["sidecar_build"].startswith("compiled"), results["sidecar_build"]
        assert "sidecar-py" in targets
        assert "sidecar/sidecar-py" in results["cpu"]["per_target"]
    else:
        assert results["sidecar_build"].startswith("interpreted")
        assert "sidecar-py" not in targets


@pytest.mark.timeout(120)
@pytest.mark.skipif(any(_which(t) is None for t in ("valgrind", "callgrind_control", "hey", "nginx")),
                    reason="needs valgrind (callgrind_control), hey and nginx")
def test_instruction_count_runs(tmp_path: Path) -> None:
    out = tmp_path / "instructions.json"
    compiled = os.environ.get("SIDECAR_COMPILED_TREE")  # see test_quick_compare_writes_results
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--requests", "50", "--config", "minimal", "--pyfloor",
         "--build", "both" if compiled else "interpreted", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    expected = {"sidecar-minimal", "pyfloor"} | ({"sidecar-py-minimal"} if compiled else set())
    assert set(results["targets"]) == expected, done.stderr[-2000:]
    for target in results["targets"].values():
        assert target["requests"] == 50
        assert target["per_request"] > 1000  # a request is thousands of instructions: counting happened
    assert "sidecar-minimal/pyfloor" in results["ratios"]
    assert "| sidecar-minimal |" in done.stdout
    assert "| pyfloor |" in done.stdout


def test_instruction_count_skips_without_valgrind() -> None:
    # No tool on PATH (the interpreter is called by its absolute path): a message and exit 0, nothing run.
    done = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "--requests", "5"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/nonexistent"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SKIP benchmarks.instructions: missing" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("module", benchmarks())
def test_micro_benchmark_runs(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--iterations", "20"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    # bench_tls_connect reports microseconds of CPU per connection; the others nanoseconds per operation.
    assert "ns/op" in done.stdout or "us CPU" in done.stdout, done.stdout


@pytest.mark.timeout(60)
def test_the_handshake_benchmark_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.handshakes", "--seconds", "0.5", "--clients", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "new TLSv1_3 mTLS connections" in done.stdout and "(0 failed)" in done.stdout, done.stdout
