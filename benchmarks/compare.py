"""Side-by-side comparison of the sidecar with nginx, HAProxy, Caddy, a naive aiohttp proxy and the Python floor.

`python -m benchmarks.compare` builds the rig of /work/shared/BENCHMARKS.md in a temp dir (an nginx
backend and every peer in front of it, pinned), measures throughput (wrk, alternating targets, median of
rounds), CPU per request (from /proc), latency at a fixed 1000 req/s (hey), optionally the sidecar with
`workers: N`, and the sidecar's memory (idle, 10,000 idle connections, 1 GiB streamed each way). It
prints a markdown table and writes JSON + markdown to benchmarks/results/. It installs nothing: a peer
whose binary is missing is skipped, with the reason printed and recorded. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import memory, report
from benchmarks.build import COMPILED_TREE_ENV, compiled_build, interpreted
from benchmarks.load import LoadError, hey, wrk
from benchmarks.peers import (
    ALL_TARGETS,
    PROXIES,
    STARTERS,
    TELEMETRY_TARGETS,
    Skip,
    Started,
    start_backend,
    start_sidecar,
)
from benchmarks.rig import (
    REPO,
    TOOLS,
    Pinning,
    Rig,
    cpu_seconds,
    free_port,
    http_get,
    machine,
    raise_nofile,
    rss_bytes,
    run_main,
    signals_raise,
    tool_version,
    tree,
    which,
    write_results,
)

RESULTS = REPO / "benchmarks" / "results"
MB = memory.MB


@dataclass(frozen=True)
class Plan:
    """How long and how much: the full run of BENCHMARKS.md, or the quick smoke run for CI."""

    quick: bool
    wrk_seconds: int
    warmup_seconds: int
    rounds: int
    hey_seconds: int
    idle_connections: int
    stream_bytes: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, wrk_seconds=1, warmup_seconds=0, rounds=1, hey_seconds=1, idle_connections=1000,
                       stream_bytes=20 * 1024 * 1024)
        return cls(False, wrk_seconds=10, warmup_seconds=1, rounds=3, hey_seconds=10, idle_connections=10_000,
                   stream_bytes=1024 ** 3)


def say(message: str) -> None:
    """Progress goes to stderr; stdout carries only the final table."""
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: ~1 s per measurement, 1 round, 1,000 idle connections, 20 MiB streams")
    parser.add_argument("--only", help=f"comma-separated targets among {','.join(PROXIES)} (direct is always run)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the sidecar memory measurements")
    parser.add_argument("--skip-latency", action="store_true", help="skip latency at fixed load (hey)")
    parser.add_argument("--workers", help="also run the sidecar with `workers: N` for each N, e.g. 1,2")
    parser.add_argument("--telemetry", action="store_true",
                        help=f"also run the realistic config with telemetry on: {', '.join(TELEMETRY_TARGETS)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default benchmarks/results)")
    parser.add_argument("--interpreted", action="store_true",
                        help="do not compile: `sidecar` is then the interpreted source, and `sidecar-py` is not run")
    parser.add_argument("--compiled-tree", help="an existing scripts/build-compiled copy to run `sidecar` from "
                        f"(default ${COMPILED_TREE_ENV}, else compiled into the run's temp dir)")
    args = parser.parse_args(argv)
    if args.only:
        wanted = [t.strip() for t in args.only.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in (*ALL_TARGETS, *TELEMETRY_TARGETS)]
        if unknown:
            parser.error(f"unknown target(s) {unknown}; choose among {', '.join((*PROXIES, *TELEMETRY_TARGETS))}")
        args.targets = [t for t in (*PROXIES, *TELEMETRY_TARGETS) if t in wanted]
    else:
        args.targets = list(PROXIES)
    if args.telemetry:
        args.targets += [t for t in TELEMETRY_TARGETS if t not in args.targets]
    if args.interpreted and "sidecar-py" in args.targets:
        args.targets.remove("sidecar-py")
    try:
        args.worker_counts = [int(n) for n in args.workers.split(",")] if args.workers else []
    except ValueError:
        parser.error("--workers takes a comma-separated list of integers, e.g. 1,2")
    return args


def check_tools(targets: list[str]) -> dict[str, str | None]:
    """Say which tools the run uses and which are missing (nothing is installed)."""
    versions: dict[str, str | None] = {}
    commands = {"nginx": ["nginx", "-v"], "haproxy": ["haproxy", "-v"], "caddy": ["caddy", "version"],
                "wrk": ["wrk", "--version"], "hey": None, "taskset": ["taskset", "--version"]}
    for tool, purpose in TOOLS.items():
        path = which(tool)
        if path is None:
            versions[tool] = None
            say(f"missing: {tool} ({purpose})")
            continue
        command = commands[tool]
        versions[tool] = tool_version([path, *command[1:]]) if command else path
    say("tools: " + ", ".join(f"{t}={'yes' if v else 'MISSING'}" for t, v in versions.items()))
    return versions


def measure_throughput(rig: Rig, started: dict[str, Started], plan: Plan, order: list[str]) -> dict[str, dict]:
    """wrk on each target in turn, `rounds` times; CPU of each target's tree around each of its runs."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in order}
    if plan.warmup_seconds:
        for name in order:
            wrk(rig.pinning, started[name].port, plan.warmup_seconds)
    for round_no in range(plan.rounds):
        # Alternate targets, and rotate the order each round, so drift on the machine is spread evenly.
        shift = round_no % len(order)
        for name in order[shift:] + order[:shift]:
            pid = started[name].proc.pid
            before = cpu_seconds(pid)
            result = wrk(rig.pinning, started[name].port, plan.wrk_seconds)
            result["cpu_seconds"] = cpu_seconds(pid) - before
            runs[name].append(result)
            say(f"  round {round_no + 1}/{plan.rounds} {name:<10} {result['rps']:10.0f} req/s  "
                f"cpu {result['cpu_seconds']:.2f}s")
    out: dict[str, dict] = {}
    for name, results in runs.items():
        requests = sum(r["requests"] for r in results)
        cpu = sum(r["cpu_seconds"] for r in results)
        out[name] = {
            "rps_median": statistics.median(r["rps"] for r in results),
            "rps_runs": [round(r["rps"], 1) for r in results],
            "requests": requests,
            "cpu_seconds": round(cpu, 3),
            "vcpu_s_per_1000": cpu / requests * 1000 if requests else None,
            "non_2xx": sum(r["non_2xx"] for r in results),
            "socket_errors": sum(r["socket_errors"] for r in results),
        }
    return out


def measure_latency(rig: Rig, started: dict[str, Started], plan: Plan, order: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in order:
        try:
            out[name] = hey(rig.pinning, started[name].port, plan.hey_seconds)
        except LoadError as exc:
            say(f"  latency {name}: {exc}")
            out[name] = {"error": str(exc)}
            continue
        say(f"  latency {name:<10} p50 {out[name]['p50_ms']:.2f} ms  p99 {out[name]['p99_ms']:.2f} ms  "
            f"({out[name]['requests']} requests)")
    return out


def measure_workers(rig: Rig, backend: Started, plan: Plan, counts: list[int]) -> dict[str, dict]:
    """The sidecar with `workers: N` for each N, side by side (same rounds, alternating)."""
    out: dict[str, dict] = {}
    started: dict[str, Started] = {}
    try:
        for n in counts:
            try:
                started[str(n)] = start_sidecar(rig, backend.port, workers=n, name=f"sidecar-w{n}")
            except Skip as exc:
                say(f"  workers {n}: skipped: {exc}")
                out[str(n)] = {"skipped": str(exc).splitlines()[0]}
        if started:
            order = list(started)
            results = measure_throughput(rig, started, plan, order)
            for n, result in results.items():
                result["processes"] = len(tree(started[n].proc.pid))
                out[n] = result
    finally:
        for s in started.values():
            rig.stop(s.proc)
    return out


def measure_memory(rig: Rig, backend: Started, plan: Plan) -> dict[str, object]:
    """A fresh sidecar (the realistic config plus a /stream route to the raw upstream)."""
    stream_port = free_port()
    upstream = rig.start("stream-upstream", [sys.executable, "-m", "benchmarks.stream_upstream", "--port",
                                             str(stream_port)], rig.pinning.load, cwd=REPO)
    sidecar = start_sidecar(rig, backend.port, stream_port=stream_port, name="sidecar-memory")
    try:
        pid = sidecar.proc.pid
        for _ in range(20):  # a few requests so the path is warm, as a serving sidecar's would be
            http_get(sidecar.port)
        idle = memory.settle_rss(pid, 1.0)
        say(f"  idle RSS {idle / MB:.1f} MB ({len(tree(pid))} process(es))")
        result: dict[str, object] = {"idle_rss_mb": round(idle / MB, 1), "processes": len(tree(pid))}

        started_at = time.monotonic()
        socks = memory.open_idle_connections(sidecar.port, plan.idle_connections,
                                             deadline_s=30.0 if plan.quick else 120.0)
        try:
            with_conns = memory.settle_rss(pid, 1.0)
            opened = len(socks)
        finally:
            memory.close_all(socks)
        say(f"  {opened} idle connections: RSS {with_conns / MB:.1f} MB "
            f"(opened in {time.monotonic() - started_at:.1f}s)")
        result["idle_connections"] = {
            "wanted": plan.idle_connections,
            "opened": opened,
            "rss_mb": round(with_conns / MB, 1),
            "growth_mb": round((with_conns - idle) / MB, 1),
            "kib_per_connection": round((with_conns - idle) / 1024 / opened, 1) if opened else None,
        }
        memory.settle_rss(pid, 1.0)  # let the sidecar notice the closes before the stream baselines
        for direction, run in (("upload", memory.stream_upload), ("download", memory.stream_download)):
            try:
                stream = run(pid, sidecar.port, plan.stream_bytes)
            except OSError as exc:
                say(f"  {direction}: failed: {exc}")
                result[direction] = {"error": str(exc)}
                continue
            result[direction] = stream.as_dict()
            say(f"  {direction} {plan.stream_bytes / 2**20:.0f} MiB in {stream.seconds:.1f}s (status "
                f"{stream.status}): RSS {stream.baseline_rss / MB:.1f} -> peak {stream.peak_rss / MB:.1f} MB, "
                f"growth {stream.growth / MB:.1f} MB")
        result["rss_after_mb"] = round(rss_bytes(pid) / MB, 1)
        return result
    finally:
        rig.stop(sidecar.proc)
        rig.stop(upstream)


def summarize(results: dict) -> None:
    """Ratios, per-request CPU and latency added, derived from the raw measurements."""
    tp = results.get("throughput") or {}
    targets = tp.get("targets", {})
    side = targets.get("sidecar")
    if side:
        tp["ratios"] = {f"sidecar/{name}": side["rps_median"] / t["rps_median"]
                        for name, t in targets.items() if name != "sidecar" and t["rps_median"]}
    if "direct" in targets and "nginx" in targets:
        direct, nginx = targets["direct"]["rps_median"], targets["nginx"]["rps_median"]
        within = abs(direct - nginx) <= 0.1 * direct
        tp["direct_within_10pct_of_nginx"] = within
        tp["note"] = ("direct is within 10% of nginx: the load generator + backend on the load CPU are the "
                      "bottleneck, throughput ratios flatten toward 1; CPU per request stays honest"
                      if within else "direct is more than 10% above nginx: the proxies are the bottleneck")
    cpu: dict[str, object] = {name: t["vcpu_s_per_1000"] for name, t in targets.items()}
    for peer in ("nginx", "pyfloor", "sidecar-py"):
        if side and side["vcpu_s_per_1000"] and targets.get(peer, {}).get("vcpu_s_per_1000"):
            cpu[f"sidecar/{peer}"] = side["vcpu_s_per_1000"] / targets[peer]["vcpu_s_per_1000"]
    results["cpu"] = {"unit": "vCPU-seconds per 1000 requests (direct: the backend's)", "per_target": cpu}
    lat = results.get("latency") or {}
    direct_lat = lat.get("targets", {}).get("direct", {})
    if "p50_ms" in direct_lat:
        lat["added_over_direct"] = {
            name: {k: round(v[k] - direct_lat[k], 3) for k in ("p50_ms", "p99_ms", "mean_ms")}
            for name, v in lat["targets"].items() if name != "direct" and "p50_ms" in v}
    results["targets"] = report.check_targets(results)


def run(args: argparse.Namespace) -> dict:
    plan = Plan.make(args.quick)
    nofile = raise_nofile()
    pinning = Pinning.detect()
    results: dict = {"machine": machine(), "mode": "quick" if plan.quick else "full", "plan": plan.__dict__,
                     "pinning": pinning.note, "nofile": nofile, "skipped": {}}
    say(f"benchmarks.compare ({results['mode']}): {pinning.note}; open-file limit {nofile}")
    results["tools"] = check_tools(args.targets)
    if which("wrk") is None:
        say("wrk is missing: throughput and CPU cannot be measured (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp, signals_raise():
        rig = Rig(Path(tmp), pinning)
        try:
            build = source = interpreted()
            if source.compiled and "sidecar-py" in args.targets:
                say(f"SKIP sidecar-py: {source.note}")
                results["skipped"]["sidecar-py"] = source.note
                args.targets.remove("sidecar-py")
            if not args.interpreted and any(t.startswith("sidecar") for t in args.targets):
                say("building the compiled sidecar (scripts/build-compiled, about 1.5 minutes)")
                build = compiled_build(Path(tmp), args.compiled_tree)
                if not build.compiled and "sidecar-py" in args.targets:
                    args.targets.remove("sidecar-py")  # it would be the same build twice
            rig.sidecar_tree = build.tree
            results["sidecar_build"] = build.note
            say(f"sidecar build: {build.note}")
            backend = start_backend(rig)
            started: dict[str, Started] = {"direct": backend}
            for name in args.targets:
                try:
                    started[name] = STARTERS[name](rig, backend.port)
                    say(f"started {name} on 127.0.0.1:{started[name].port}")
                except Skip as exc:
                    say(f"SKIP {name}: {exc}")
                    results["skipped"][name] = str(exc).splitlines()[0]
            order = list(started)
            if which("wrk") is not None:
                say(f"throughput: wrk -t1 -c50 -d{plan.wrk_seconds}s, {plan.rounds} round(s), alternating")
                results["throughput"] = {"targets": measure_throughput(rig, started, plan, order)}
            else:
                results["skipped"]["throughput"] = "wrk not found"
            if args.skip_latency:
                results["skipped"]["latency"] = "--skip-latency"
            elif which("hey") is None:
                say("SKIP latency: hey not found (apt-get install hey)")
                results["skipped"]["latency"] = "hey not found"
            else:
                say(f"latency: hey -c 10 -q 100 -z {plan.hey_seconds}s (1000 req/s)")
                results["latency"] = {"rate": 1000, "targets": measure_latency(rig, started, plan, order)}
            if args.worker_counts and which("wrk") is not None:
                say(f"workers: {args.worker_counts}")
                results["workers"] = measure_workers(rig, backend, plan, args.worker_counts)
            if args.skip_memory:
                results["skipped"]["memory"] = "--skip-memory"
            elif "sidecar" not in started:
                results["skipped"]["memory"] = "the sidecar is not running"
            else:
                # Peers are no longer needed: stop them so their sockets and CPU do not disturb the memory run.
                for name in order:
                    if name not in ("direct",):
                        rig.stop(started[name].proc)
                say("memory: sidecar RSS idle, with idle connections, while streaming")
                results["memory"] = measure_memory(rig, backend, plan)
        finally:
            rig.close()
    summarize(results)
    return results


def write(results: dict, out: Path) -> tuple[Path, Path, str]:
    return write_results(results, out, "-quick" if results["mode"] == "quick" else "", report.markdown(results))


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, write, say, Skip)


if __name__ == "__main__":
    sys.exit(main())
