"""HTTP/2 and gRPC unary: the sidecar next to nginx (`listen ... http2`, `grpc_pass`), h2load, in one run.

`python -m benchmarks.http2` builds the compare rig's pieces in a temp dir: the nginx backend, the gRPC upstream
(benchmarks/grpc_upstream.py, grpcio) and h2load on the load CPU, and the proxies on the proxy CPU. HTTP/2:
h2load (prior-knowledge h2c) to nginx with `listen ... http2` proxying to the backend, and to the compiled
sidecar with the minimal config, on one connection of 100 streams and on 50 connections of 10. gRPC unary:
h2load POSTing one gRPC message to `/svc.Echo/Say` through nginx (`grpc_pass`) and through the sidecar (a
cluster with `protocol: http2`), and straight to the upstream (`direct`, its ceiling), against two upstreams:
the grpcio server (a real gRPC server; its ~160 us of CPU per call shares the load CPU with h2load and sets the
pace) and a static one (nginx answering a ready-made gRPC response, configs/nginx-grpc-static.conf, so the
proxy's own core sets the pace; the target is judged there). It reports requests per second (median of
alternating rounds) and the proxy's CPU per 1000 requests, as ratios sidecar / nginx, checks the 5,000 gRPC
calls/s target, and writes JSON + markdown to benchmarks/results/. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.build import COMPILED_TREE_ENV, compiled_build, interpreted
from benchmarks.compare import RESULTS, say
from benchmarks.grpc_upstream import PATH as GRPC_PATH
from benchmarks.load import LoadError, run_tool
from benchmarks.peers import (
    Skip,
    Started,
    nginx_user,
    render,
    sidecar_minimal_config,
    start_backend,
    write_config,
)
from benchmarks.rig import (
    REPO,
    Pinning,
    Proc,
    Rig,
    cpu_seconds,
    free_port,
    machine,
    raise_nofile,
    run_main,
    signals_raise,
    tool_version,
    which,
    write_results,
)

GRPC_TARGET_CALLS = 5000  # BENCHMARKS.md / issue 19: gRPC unary calls per second on one core, compiled build
PAYLOAD = b"hello from the benchmark client"  # the gRPC message (echoed back by the upstream)
# When the upstream's CPU over a run's wall time is above this, it (not the proxy) may set the pace.
UPSTREAM_BUSY = 0.8
PROXY_BUSY = 0.9  # ... and when the proxy's is above this, the proxy does


@dataclass(frozen=True)
class Scenario:
    """One h2load load shape against a group of targets."""

    name: str
    kind: str  # "http2" (GET / to the nginx backend) or "grpc" (a unary call to the gRPC upstream)
    connections: int
    streams: int
    upstream: str = ""  # gRPC: "grpcio" (benchmarks/grpc_upstream.py) or "static" (nginx, a ready-made answer)

    @property
    def label(self) -> str:
        return f"h2load -c {self.connections} -m {self.streams}"


SCENARIOS = (
    Scenario("http2-c1-m100", "http2", 1, 100),
    Scenario("http2-c50-m10", "http2", 50, 10),
    Scenario("grpc-c1-m100", "grpc", 1, 100, "grpcio"),
    Scenario("grpc-c10-m10", "grpc", 10, 10, "grpcio"),
    Scenario("grpc-static-c1-m100", "grpc", 1, 100, "static"),
    Scenario("grpc-static-c10-m10", "grpc", 10, 10, "static"),
)
# The scenario the gRPC target is judged on: one connection of 100 streams, the proxy's core setting the pace.
TARGET_SCENARIO = "grpc-static-c1-m100"


@dataclass(frozen=True)
class Plan:
    """How much: requests per h2load run (per kind) and rounds; quick is the CI smoke run."""

    quick: bool
    requests: dict[str, int]
    rounds: int
    warmup_requests: int
    timeout: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, {"http2": 500, "grpc": 500}, rounds=1, warmup_requests=0, timeout=30.0)
        return cls(False, {"http2": 30_000, "grpc": 20_000}, rounds=3, warmup_requests=2000, timeout=120.0)


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed (0), 4-byte big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load(pinning: Pinning, port: int, requests: int, scenario: Scenario, data: Path | None,
           timeout: float) -> dict[str, float]:
    """`h2load -n N -c C -m M` (prior-knowledge h2c), pinned to the load CPU; gRPC: POST `data` to the method."""
    argv = ["h2load", "-n", str(requests), "-c", str(scenario.connections), "-m", str(scenario.streams)]
    url = f"http://127.0.0.1:{port}/"
    if scenario.kind == "grpc":
        assert data is not None
        argv += ["-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        url = f"http://127.0.0.1:{port}{GRPC_PATH}"
    out = run_tool(pinning.wrap(pinning.load, [*argv, url]), timeout=timeout)
    return parse_h2load(out)


def parse_h2load(out: str) -> dict[str, float]:
    """h2load's "finished in 1.23s, 8123.45 req/s, ..." and its request and status-code counts."""
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if finished is None or counts is None or codes is None:
        raise LoadError(f"cannot read h2load's output:\n{out[-1500:]}")
    seconds = float(finished.group(1)) / (1000.0 if finished.group(2) == "ms" else 1.0)
    return {"requests": int(counts.group(4)), "seconds": seconds, "rps": float(finished.group(3)),
            "failed": int(counts.group(5)) + int(counts.group(6)) + int(counts.group(7)),
            "non_2xx": sum(int(g) for g in codes.groups()[1:])}


# -- targets --------------------------------------------------------------------------------------


def start_nginx_http2(rig: Rig, name: str, upstream_port: int, grpc: bool) -> Started:
    """nginx with `listen PORT http2` (h2c) proxying to the backend (proxy_pass) or the gRPC upstream (grpc_pass)."""
    nginx = which("nginx")
    if nginx is None:
        raise Skip("nginx not found (Debian package: nginx)")
    port = free_port()
    location = ("            grpc_pass grpc://upstream_app;" if grpc else
                "            proxy_pass http://upstream_app;\n            proxy_http_version 1.1;\n"
                "            proxy_set_header Connection \"\";")
    conf = write_config(rig, f"{name}.conf", render("nginx-http2.conf", user=nginx_user(), dir=rig.workdir, name=name,
                                                    port=port, upstream_port=upstream_port, location=location))
    proc = rig.start(name, [nginx, "-p", str(rig.workdir), "-c", str(conf)], rig.pinning.proxy)
    return Started(name, proc, port)


def start_sidecar_http2(rig: Rig, name: str, upstream_port: int, grpc: bool) -> Started:
    """The sidecar, minimal config (HTTP/2 is served on the listener by default); gRPC: `protocol: http2`."""
    if grpc:
        port, admin_port = free_port(), free_port()
        text = render("sidecar-grpc.yaml", port=port, admin_port=admin_port, upstream_port=upstream_port)
    else:
        text, port, _admin = sidecar_minimal_config(upstream_port)
    conf = write_config(rig, f"{name}.yaml", text)
    proc = rig.start(name, [sys.executable, "-m", "proxy", "run", "-c", str(conf)], rig.pinning.proxy,
                     cwd=rig.sidecar_tree)
    return Started(name, proc, port)


def start_static_grpc_upstream(rig: Rig) -> Started:
    """nginx answering every call with a ready-made gRPC response (configs/nginx-grpc-static.conf), on the load
    CPU (with h2load)."""
    nginx = which("nginx")
    if nginx is None:
        raise Skip("nginx not found (Debian package: nginx)")
    (rig.workdir / "grpc-answer.bin").write_bytes(grpc_frame(PAYLOAD))
    port = free_port()
    name = "grpc-static"
    conf = write_config(rig, f"{name}.conf", render("nginx-grpc-static.conf", user=nginx_user(), dir=rig.workdir,
                                                    name=name, port=port))
    proc = rig.start(name, [nginx, "-p", str(rig.workdir), "-c", str(conf)], rig.pinning.load)
    return Started(name, proc, port)


def start_grpc_upstream(rig: Rig) -> Started:
    """benchmarks/grpc_upstream.py on the load CPU (with the backend and h2load)."""
    port = free_port()
    proc = rig.start("grpc-upstream", [sys.executable, "-m", "benchmarks.grpc_upstream", "--port", str(port)],
                     rig.pinning.load, cwd=REPO)
    return Started("grpc-upstream", proc, port)


def grpc_call(port: int, timeout: float = 2.0) -> str | None:
    """One real gRPC unary call (grpcio client): None when the echo came back, else what went wrong."""
    import grpc

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = channel.unary_unary(GRPC_PATH)(PAYLOAD, timeout=timeout)
    except grpc.RpcError as exc:
        return f"{exc.code()}: {exc.details()}"  # type: ignore[attr-defined]
    return None if answer == PAYLOAD else f"wrong echo {answer[:40]!r}"


def wait_grpc(rig: Rig, started: Started, timeout: float = 20.0) -> Started:
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while time.monotonic() < deadline:
        if not started.proc.alive():
            problem = f"exited with code {started.proc.popen.returncode}"
            break
        problem = grpc_call(started.port) or ""
        if not problem:
            return started
        time.sleep(0.2)
    rig.stop(started.proc)
    raise Skip(f"{started.name}: no gRPC echo ({problem}):\n{started.proc.log_tail()}")


def wait_h2(rig: Rig, started: Started, timeout: float = 20.0) -> Started:
    """Poll with `h2load -n 1` (prior-knowledge h2c: nginx's `http2` listener speaks nothing else) until a 2xx."""
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while time.monotonic() < deadline:
        if not started.proc.alive():
            problem = f"exited with code {started.proc.popen.returncode}"
            break
        try:
            result = parse_h2load(run_tool(["h2load", "-n", "1", f"http://127.0.0.1:{started.port}/"], timeout=5.0))
        except LoadError as exc:
            problem = str(exc).splitlines()[0]
        else:
            if result["requests"] == 1 and result["non_2xx"] == 0:
                return started
            problem = "not a 2xx"
        time.sleep(0.2)
    rig.stop(started.proc)
    raise Skip(f"{started.name}: not ready over h2c ({problem}):\n{started.proc.log_tail()}")


# -- measuring ------------------------------------------------------------------------------------


def measure(rig: Rig, scenario: Scenario, targets: dict[str, Started], plan: Plan, data: Path,
            upstream: Proc | None) -> dict[str, dict]:
    """h2load on each target in turn, `rounds` times (order rotated each round); CPU of the target around each."""
    order = list(targets)
    requests = plan.requests[scenario.kind]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in order}
    if plan.warmup_requests:
        for name in order:
            h2load(rig.pinning, targets[name].port, plan.warmup_requests, scenario, data, plan.timeout)
    for round_no in range(plan.rounds):
        shift = round_no % len(order)
        for name in order[shift:] + order[:shift]:
            target = targets[name]
            cpu0 = cpu_seconds(target.proc.pid)
            up0 = cpu_seconds(upstream.pid) if upstream is not None else 0.0
            result = h2load(rig.pinning, target.port, requests, scenario, data, plan.timeout)
            result["cpu"] = cpu_seconds(target.proc.pid) - cpu0
            result["upstream_cpu"] = (cpu_seconds(upstream.pid) - up0) if upstream is not None else 0.0
            runs[name].append(result)
            busy = f"  upstream busy {result['upstream_cpu'] / result['seconds']:.0%}" if upstream else ""
            say(f"  {scenario.name} round {round_no + 1}/{plan.rounds} {name:<8} {result['rps']:9.0f} req/s  "
                f"cpu {result['cpu']:.2f}s{busy}")
    out: dict[str, dict] = {}
    for name, results in runs.items():
        done = sum(r["requests"] for r in results)
        cpu = sum(r["cpu"] for r in results)
        seconds = sum(r["seconds"] for r in results)
        upstream_cpu = sum(r["upstream_cpu"] for r in results)
        out[name] = {
            "rps_median": statistics.median(r["rps"] for r in results),
            "rps_runs": [round(r["rps"], 1) for r in results],
            "requests": done,
            "cpu_seconds": round(cpu, 3),
            # For direct this is the upstream's own CPU (the target is the upstream).
            "vcpu_s_per_1000": cpu / done * 1000 if done else None,
            "upstream_busy": upstream_cpu / seconds if upstream is not None and seconds else None,
            # The target's CPU over h2load's wall time: near 100 %, the proxy's one core sets the pace.
            "busy": cpu / seconds if seconds else None,
            "failed": sum(int(r["failed"]) for r in results),
            "non_2xx": sum(int(r["non_2xx"]) for r in results),
        }
    return out


def summarize(results: dict) -> None:
    """Ratios sidecar / nginx per scenario, the gRPC target, and whether the upstream set the pace."""
    summary: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for name, targets in results.get("scenarios", {}).items():
        side, ngx = targets.get("sidecar", {}), targets.get("nginx", {})
        ratios = {}
        for key, field in (("rps", "rps_median"), ("cpu", "vcpu_s_per_1000")):
            if side.get(field) and ngx.get(field):
                ratios[key] = side[field] / ngx[field]
        summary[name] = ratios
        for target, t in targets.items():
            if target != "direct" and (t.get("upstream_busy") or 0) > UPSTREAM_BUSY:
                notes.append(f"{name}, {target}: the upstream was {t['upstream_busy']:.0%} busy (CPU / wall "
                             "time): it, not the proxy, may set the pace")
            elif target != "direct" and (t.get("busy") or 0) > PROXY_BUSY:
                upstream = "" if t["upstream_busy"] is None else f" (the upstream {t['upstream_busy']:.0%})"
                notes.append(f"{name}, {target}: the proxy's core was {t['busy']:.0%} busy{upstream}: the proxy "
                             "sets the pace")
    results["summary"] = summary
    results["notes"] = notes
    grpc = results.get("scenarios", {}).get(TARGET_SCENARIO, {}).get("sidecar", {})
    calls = grpc.get("rps_median")
    per_core = 1000 / grpc["vcpu_s_per_1000"] if grpc.get("vcpu_s_per_1000") else None
    results["targets"] = [{
        "what": "gRPC unary calls per second, sidecar on one core (h2load -c 1 -m 100, static upstream)",
        "target": ">= 5,000",
        "value": calls, "one_core_from_cpu": per_core,
        "compiled": results.get("sidecar_build", "").startswith("compiled"),
        "met": None if calls is None else calls >= GRPC_TARGET_CALLS}]


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict) -> str:
    m = results["machine"]
    plan = results["plan"]
    lines = [f"## HTTP/2 and gRPC: sidecar vs nginx, {m['date']} ({results['mode']} run)", "",
             f"Machine: {m['host']}, {m['cpus_allowed']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
             f"Python {m['python']}. {results['pinning']}.",
             f"`sidecar`: {results.get('sidecar_build', '?')}, minimal config. nginx: "
             f"{results['tools'].get('nginx') or '?'}, 1 worker. h2load -n {plan['requests']['http2']:,} (HTTP/2), "
             f"-n {plan['requests']['grpc']:,} (gRPC), median of {plan['rounds']} alternating round(s).", "",
             "| scenario | target | req/s (median) | runs | vCPU-s / 1000 req | target busy | upstream busy | errors |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    scenarios = {s.name: s for s in SCENARIOS}
    for name, targets in results.get("scenarios", {}).items():
        scenario = scenarios[name]
        shape = " ".join(part for part in (scenario.kind, scenario.upstream, scenario.label) if part)
        for target, t in targets.items():
            runs = ", ".join(f"{r:,.0f}" for r in t["rps_runs"])
            busy = "-" if t["upstream_busy"] is None else f"{t['upstream_busy']:.0%}"
            own = "-" if t.get("busy") is None else f"{t['busy']:.0%}"
            label = f"direct ({scenario.upstream} upstream)" if target == "direct" else target
            lines.append(f"| {shape} | {label} | {t['rps_median']:,.0f} | {runs} | {_fmt(t['vcpu_s_per_1000'])} | "
                         f"{own} | {busy} | {t['failed'] + t['non_2xx']} |")
    lines += ["", "| scenario | req/s, sidecar / nginx | CPU per request, sidecar / nginx |", "| --- | ---: | ---: |"]
    for name, ratios in results.get("summary", {}).items():
        rps, cpu = ratios.get("rps"), ratios.get("cpu")
        lines.append(f"| {name} | {'-' if rps is None else f'{rps:.2f}x'} | {'-' if cpu is None else f'{cpu:.2f}x'} |")
    for target in results.get("targets", []):
        value, core = target["value"], target["one_core_from_cpu"]
        met = {True: "yes", False: "NO", None: "n/a"}[target["met"]]
        build = "compiled build" if target["compiled"] else "NOT the compiled build"
        lines += ["", f"Target: {target['what']} {target['target']} ({build}): measured "
                  f"{'-' if value is None else f'{value:,.0f}'}/s; from its CPU per call, "
                  f"{'-' if core is None else f'{core:,.0f}'}/s on one full core. Met: {met}."]
    for note in results.get("notes", []):
        lines.append(f"Note: {note}.")
    if results.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items())]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http2", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: 500 requests per run, 1 round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default benchmarks/results)")
    parser.add_argument("--interpreted", action="store_true", help="do not compile: run the interpreted source")
    parser.add_argument("--compiled-tree", help="an existing scripts/build-compiled copy to run the sidecar from "
                        f"(default ${COMPILED_TREE_ENV}, else compiled into the run's temp dir)")
    return parser.parse_args(argv)


def _start(rig: Rig, results: dict, name: str, starter: object) -> Started | None:
    try:
        started = starter()  # type: ignore[operator]
    except Skip as exc:
        say(f"SKIP {name}: {exc}")
        results["skipped"][name] = next((line for line in str(exc).splitlines() if line.strip()), str(exc))
        return None
    say(f"started {name} on 127.0.0.1:{started.port}")
    return started


def _run_group(rig: Rig, results: dict, kind: str, targets: dict[str, Started], plan: Plan, data: Path,
               upstream: Proc | None, upstream_kind: str = "") -> None:
    for scenario in SCENARIOS:
        if scenario.kind != kind or scenario.upstream != upstream_kind:
            continue
        say(f"{scenario.name}: {scenario.label} -n {plan.requests[kind]}, {plan.rounds} round(s), alternating")
        try:
            results["scenarios"][scenario.name] = measure(rig, scenario, targets, plan, data, upstream)
        except LoadError as exc:
            say(f"{scenario.name} failed: {exc}")
            results["skipped"][scenario.name] = str(exc)[:300]


def _run_grpc(rig: Rig, results: dict, kind: str, starter: Callable[[Rig], Started], plan: Plan,
              data: Path) -> None:
    """The gRPC scenarios against one upstream: it, nginx and the sidecar in front of it; all stopped after."""
    upstream = _start(rig, results, f"grpc-{kind}-upstream", lambda: wait_grpc(rig, starter(rig)))
    if upstream is None:
        return
    group = {name: started for name, started in (
        ("direct", upstream),
        ("nginx", _start(rig, results, f"nginx-grpc-{kind}", lambda: wait_grpc(
            rig, start_nginx_http2(rig, f"nginx-grpc-{kind}", upstream.port, grpc=True)))),
        ("sidecar", _start(rig, results, f"sidecar-grpc-{kind}", lambda: wait_grpc(
            rig, start_sidecar_http2(rig, f"sidecar-grpc-{kind}", upstream.port, grpc=True)))),
    ) if started is not None}
    _run_group(rig, results, "grpc", group, plan, data, upstream.proc, kind)
    for started in group.values():
        rig.stop(started.proc)


def run(args: argparse.Namespace) -> dict:
    plan = Plan.make(args.quick)
    nofile = raise_nofile()
    pinning = Pinning.detect()
    results: dict = {"machine": machine(), "mode": "quick" if plan.quick else "full",
                     "plan": {"requests": plan.requests, "rounds": plan.rounds,
                              "warmup_requests": plan.warmup_requests},
                     "pinning": pinning.note, "nofile": nofile, "skipped": {}, "scenarios": {},
                     "tools": {"nginx": tool_version([which("nginx") or "nginx", "-v"]) or None,
                               "h2load": tool_version([which("h2load") or "h2load", "--version"]) or None,
                               "taskset": which("taskset")}}
    say(f"benchmarks.http2 ({results['mode']}): {pinning.note}; open-file limit {nofile}")
    for tool in ("nginx", "h2load"):
        if which(tool) is None:
            raise Skip(f"{tool} not found (Debian package: {'nghttp2-client' if tool == 'h2load' else tool}); "
                       "nothing measured")
    with tempfile.TemporaryDirectory(prefix="sidecar-http2-") as tmp, signals_raise():
        work = Path(tmp)
        rig = Rig(work, pinning)
        try:
            build = interpreted()
            if not args.interpreted:
                say("building the compiled sidecar (scripts/build-compiled, about 1.5 minutes)")
                build = compiled_build(work, args.compiled_tree)
            rig.sidecar_tree = build.tree
            results["sidecar_build"] = build.note
            say(f"sidecar build: {build.note}")
            data = work / "grpc-request.bin"
            data.write_bytes(grpc_frame(PAYLOAD))
            backend = start_backend(rig)
            # HTTP/2 in front of the nginx backend, then stopped so the gRPC group has the proxy CPU alone.
            group = {name: started for name, started in (
                ("nginx", _start(rig, results, "nginx", lambda: wait_h2(
                    rig, start_nginx_http2(rig, "nginx-http2", backend.port, grpc=False)))),
                ("sidecar", _start(rig, results, "sidecar", lambda: wait_h2(
                    rig, start_sidecar_http2(rig, "sidecar-http2", backend.port, grpc=False)))),
            ) if started is not None}
            _run_group(rig, results, "http2", group, plan, data, None)
            for started in group.values():
                rig.stop(started.proc)
            for kind, starter in (("grpcio", start_grpc_upstream), ("static", start_static_grpc_upstream)):
                _run_grpc(rig, results, kind, starter, plan, data)
        finally:
            rig.close()
    summarize(results)
    return results


def write(results: dict, out: Path) -> tuple[Path, Path, str]:
    return write_results(results, out, "-http2-quick" if results["mode"] == "quick" else "-http2", markdown(results))


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, write, say, Skip)


if __name__ == "__main__":
    sys.exit(main())
