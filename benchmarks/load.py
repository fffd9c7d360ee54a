"""Load generators: wrk (throughput) and hey (latency at a fixed rate), run pinned to the load CPU.

Each run is bounded: the tool's own duration plus a margin as the subprocess timeout. Parsers return
plain dicts so results go straight into the JSON.
"""

from __future__ import annotations

import math
import re
import statistics
import subprocess

from benchmarks.rig import Pinning


class LoadError(Exception):
    """The load generator failed or printed something we cannot read."""


def run_tool(argv: list[str], timeout: float) -> str:
    """Run a measuring tool to completion: its stdout, or LoadError (timeout, non-zero exit)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{argv[0]} did not finish within {timeout:g}s") from exc
    if done.returncode != 0:
        raise LoadError(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


def wrk(pinning: Pinning, port: int, seconds: int, connections: int = 50, path: str = "/") -> dict[str, float]:
    """`wrk -t1 -cN -dS`: requests completed, requests/s, and the non-2xx/socket-error counts."""
    argv = pinning.wrap(pinning.load, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                                       f"http://127.0.0.1:{port}{path}"])
    out = run_tool(argv, timeout=seconds + 30)
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if match is None:
        raise LoadError(f"cannot read wrk's output:\n{out}")
    requests = int(match.group(1))
    elapsed = float(match.group(2)) / (1000.0 if match.group(3) == "ms" else 1.0)
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock is not None:
        errors = sum(int(g) for g in sock.groups())
    return {
        "requests": requests,
        "seconds": elapsed,
        "rps": requests / elapsed if elapsed else 0.0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors,
    }


def hey(pinning: Pinning, port: int, seconds: int, workers: int = 10, qps_per_worker: int = 100,
        path: str = "/") -> dict[str, float]:
    """`hey -c W -q Q -z Ss` (W x Q requests/s in total), latencies from its CSV (every request).

    hey prints seconds with 4 decimals, so single latencies are quantised to 0.1 ms; the mean over
    thousands of requests is finer than that and is reported next to p50/p99.
    """
    argv = pinning.wrap(pinning.load, ["hey", "-c", str(workers), "-q", str(qps_per_worker), "-z", f"{seconds}s",
                                       "-cpus", "1", "-o", "csv", f"http://127.0.0.1:{port}{path}"])
    out = run_tool(argv, timeout=seconds + 30)
    latencies: list[float] = []
    failed = 0
    for line in out.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) < 7:
            continue
        try:
            latency, status = float(fields[0]), int(fields[6])
        except ValueError:
            continue
        if status != 200:
            failed += 1
        latencies.append(latency * 1000.0)
    if len(latencies) < 10:
        raise LoadError(f"hey recorded only {len(latencies)} requests")
    latencies.sort()
    return {
        "requests": len(latencies),
        "non_200": failed,
        "rate": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": statistics.fmean(latencies),
    }


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, min(len(ordered), math.ceil(pct / 100.0 * len(ordered))))
    return ordered[rank - 1]
