"""The mTLS hop: sidecar A -> mTLS -> sidecar B -> backend, next to nginx doing the same, in one run.

`python -m benchmarks.mtls` builds the compare rig's pieces in a temp dir: the nginx backend and wrk on the
load CPU, and for each target two proxies on the proxy CPU: A takes plain HTTP from wrk and originates mTLS
to B (its client certificate, B's chain and identity verified, keep-alive to B), B terminates mTLS
(client certificate required) and proxies plain HTTP to the backend. Targets: `sidecar` (two compiled
sidecars: A with the realistic outbound config, B an inbound mTLS listener), `nginx` (two nginx servers,
`proxy_ssl_certificate` + `proxy_ssl_verify on` on A, `ssl_verify_client on` on B), and the same two hops
without TLS (`sidecar-plain`, `nginx-plain`) to show what mTLS itself adds. Certificates are ECDSA P-256
from `proxy.security.certs`, the same files for both. It measures throughput and CPU per 1000 requests of
both hops together (wrk, alternating targets, median of rounds), then runs `benchmarks.handshakes` once for
new mTLS connections per second on one core, and writes JSON + markdown to benchmarks/results/. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.build import COMPILED_TREE_ENV, compiled_build, interpreted
from benchmarks.compare import RESULTS, Plan, say
from benchmarks.load import LoadError, wrk
from benchmarks.peers import Skip, Started, nginx_user, render, start_backend, write_config
from benchmarks.rig import (
    REPO,
    Pinning,
    Rig,
    cpu_seconds,
    free_port,
    http_get,
    machine,
    raise_nofile,
    run_main,
    signals_raise,
    tool_version,
    wait_ready,
    which,
    write_results,
)

# Reported in this order; "direct" (wrk straight to the backend) is always measured too.
TARGETS = ("sidecar", "nginx", "sidecar-plain", "nginx-plain")
CALLER_ID = "spiffe://cluster.local/ns/bench/sa/caller"
CALLEE_ID = "spiffe://cluster.local/ns/bench/sa/callee"
# nginx verifies an upstream by DNS name, not by SPIFFE URI: B's certificate carries both (the sidecar
# ignores the DNS name and checks the URI).
CALLEE_DNS = "callee.bench"
# Istio's published cost of its Envoy sidecar: 0.20 vCPU per 1000 requests per second going through the
# proxy (1 KiB payloads, mTLS, telemetry). A request on this hop goes through two proxies.
ISTIO_PER_PROXY = 0.20
HANDSHAKES_SECONDS = {True: 0.5, False: 10.0}  # quick, full
HANDSHAKES_CLIENTS = {True: 1, False: 4}


@dataclass
class Hop:
    """One target: A (where the load goes) and B, each a process tree on the proxy CPU."""

    name: str
    a: Started
    b: Started
    admin_a: int | None = None  # the sidecar's admin port (its /clusters shows the TLS handshakes made)

    @property
    def port(self) -> int:
        return self.a.port


def make_pki(directory: Path) -> Path:
    """A CA and the two workloads' certificates (ECDSA P-256): `caller.pem`, `callee.pem` (+ `-key.pem`)."""
    from proxy.security.certs import init_ca, issue

    init_ca(directory / "ca")
    issue(directory / "ca", CALLER_ID, directory / "caller")
    issue(directory / "ca", CALLEE_ID, directory / "callee", dns_names=[CALLEE_DNS])
    return directory


def _ready(rig: Rig, hop: Hop, timeout: float, tls: bool) -> Hop:
    """Wait for B (plain: on its own; mTLS: through A) and then for GET / through A, B and the backend."""
    problem = None if tls else wait_ready(hop.b.proc, hop.b.port, timeout)
    if problem is None:
        problem = wait_ready(hop.a.proc, hop.a.port, timeout)
        if problem is not None:
            problem += f"\n{hop.b.name}'s log:\n{hop.b.proc.log_tail()}"
    if problem is not None:
        rig.stop(hop.a.proc)
        rig.stop(hop.b.proc)
        raise Skip(problem)
    return hop


def start_nginx_hop(rig: Rig, backend_port: int, pki: Path, tls: bool) -> Hop:
    nginx = which("nginx")
    if nginx is None:
        raise Skip("nginx not found (Debian package: nginx)")
    name = "nginx" if tls else "nginx-plain"
    b_port, a_port = free_port(), free_port()
    server_tls = render("nginx-mtls-inbound-tls.conf", pki=pki) if tls else ""
    conf_b = write_config(rig, f"{name}-b.conf", render(
        "nginx-mtls-inbound.conf", user=nginx_user(), dir=rig.workdir, name=f"{name}-b", port=b_port,
        backend_port=backend_port, listen_tls="ssl" if tls else "", server_tls=server_tls))
    proxy_tls = render("nginx-mtls-outbound-tls.conf", pki=pki, callee_name=CALLEE_DNS) if tls else ""
    conf_a = write_config(rig, f"{name}-a.conf", render(
        "nginx-mtls-outbound.conf", user=nginx_user(), dir=rig.workdir, name=f"{name}-a", port=a_port,
        upstream_port=b_port, scheme="https" if tls else "http", proxy_tls=proxy_tls))
    proc_b = rig.start(f"{name}-b", [nginx, "-p", str(rig.workdir), "-c", str(conf_b)], rig.pinning.proxy)
    proc_a = rig.start(f"{name}-a", [nginx, "-p", str(rig.workdir), "-c", str(conf_a)], rig.pinning.proxy)
    hop = Hop(name, Started(f"{name}-a", proc_a, a_port), Started(f"{name}-b", proc_b, b_port))
    return _ready(rig, hop, 15.0, tls)


def start_sidecar_hop(rig: Rig, backend_port: int, pki: Path, tls: bool) -> Hop:
    name = "sidecar" if tls else "sidecar-plain"
    b_port, b_admin, a_port, a_admin = free_port(), free_port(), free_port(), free_port()
    listener_tls = (f"tls: {{cert: {pki}/callee.pem, key: {pki}/callee-key.pem, ca: {pki}/ca/ca.pem, "
                    "require_client_cert: true}") if tls else ""
    conf_b = write_config(rig, f"{name}-b.yaml", render(
        "sidecar-mtls-inbound.yaml", port=b_port, admin_port=b_admin, backend_port=backend_port,
        listener_tls=listener_tls))
    cluster_tls = (f"tls: {{cert: {pki}/caller.pem, key: {pki}/caller-key.pem, ca: {pki}/ca/ca.pem, "
                   f"expect_identity: {CALLEE_ID}}}") if tls else ""
    conf_a = write_config(rig, f"{name}-a.yaml", render(
        "sidecar-mtls-outbound.yaml", port=a_port, admin_port=a_admin, upstream_port=b_port,
        cluster_tls=cluster_tls))
    argv = [sys.executable, "-m", "proxy", "run", "-c"]
    proc_b = rig.start(f"{name}-b", [*argv, str(conf_b)], rig.pinning.proxy, cwd=rig.sidecar_tree)
    proc_a = rig.start(f"{name}-a", [*argv, str(conf_a)], rig.pinning.proxy, cwd=rig.sidecar_tree)
    hop = Hop(name, Started(f"{name}-a", proc_a, a_port), Started(f"{name}-b", proc_b, b_port), admin_a=a_admin)
    return _ready(rig, hop, 20.0, tls)


STARTERS = {
    "sidecar": lambda rig, port, pki: start_sidecar_hop(rig, port, pki, tls=True),
    "nginx": lambda rig, port, pki: start_nginx_hop(rig, port, pki, tls=True),
    "sidecar-plain": lambda rig, port, pki: start_sidecar_hop(rig, port, pki, tls=False),
    "nginx-plain": lambda rig, port, pki: start_nginx_hop(rig, port, pki, tls=False),
}


def _cpu(hop: Hop | Started) -> tuple[float, float]:
    """CPU seconds so far of A's and B's trees (the backend's for direct, as A; 0 for B)."""
    if isinstance(hop, Started):
        return cpu_seconds(hop.proc.pid), 0.0
    return cpu_seconds(hop.a.proc.pid), cpu_seconds(hop.b.proc.pid)


def measure(rig: Rig, targets: dict[str, Hop | Started], plan: Plan) -> dict[str, dict]:
    """wrk on each target in turn, `rounds` times (order rotated each round); CPU of A and B around each run."""
    order = list(targets)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in order}
    if plan.warmup_seconds:  # also opens (and handshakes) the keep-alive connections A keeps to B
        for name in order:
            wrk(rig.pinning, targets[name].port, plan.warmup_seconds)
    for round_no in range(plan.rounds):
        shift = round_no % len(order)
        for name in order[shift:] + order[:shift]:
            a0, b0 = _cpu(targets[name])
            result = wrk(rig.pinning, targets[name].port, plan.wrk_seconds)
            a1, b1 = _cpu(targets[name])
            result["cpu_a"], result["cpu_b"] = a1 - a0, b1 - b0
            runs[name].append(result)
            say(f"  round {round_no + 1}/{plan.rounds} {name:<14} {result['rps']:9.0f} req/s  cpu A "
                f"{result['cpu_a']:.2f}s + B {result['cpu_b']:.2f}s")
    out: dict[str, dict] = {}
    for name, results in runs.items():
        requests = sum(r["requests"] for r in results)
        cpu_a, cpu_b = sum(r["cpu_a"] for r in results), sum(r["cpu_b"] for r in results)

        def per_1000(cpu: float, requests: int = requests) -> float | None:
            return cpu / requests * 1000 if requests else None

        out[name] = {
            "rps_median": statistics.median(r["rps"] for r in results),
            "rps_runs": [round(r["rps"], 1) for r in results],
            "requests": requests,
            "cpu_seconds_a": round(cpu_a, 3),
            "cpu_seconds_b": round(cpu_b, 3),
            "vcpu_s_per_1000": per_1000(cpu_a + cpu_b),
            "vcpu_s_per_1000_a": per_1000(cpu_a),
            "vcpu_s_per_1000_b": per_1000(cpu_b),
            "non_2xx": sum(r["non_2xx"] for r in results),
            "socket_errors": sum(r["socket_errors"] for r in results),
        }
    return out


def tls_handshakes_made(hop: Hop) -> dict[str, int] | None:
    """The full and resumed handshakes sidecar A made to B (its /clusters), proof the hop really was mTLS."""
    if hop.admin_a is None:
        return None
    try:
        status, body = http_get(hop.admin_a, "/clusters")
        clusters = json.loads(body)["clusters"] if status == 200 else []
    except (OSError, ValueError, KeyError):
        return None
    totals = {"full_handshakes": 0, "resumed_handshakes": 0}
    for cluster in clusters:
        for endpoint in cluster.get("endpoints", []):
            for key in totals:
                totals[key] += int((endpoint.get("tls") or {}).get(key, 0))
    return totals


def run_handshakes(tree: Path, quick: bool) -> dict[str, object]:
    """`python -m benchmarks.handshakes` once (its own sidecar on the proxy CPU, clients on the load CPU)."""
    seconds, clients = HANDSHAKES_SECONDS[quick], HANDSHAKES_CLIENTS[quick]
    argv = [sys.executable, "-m", "benchmarks.handshakes", "--tree", str(tree), "--seconds", str(seconds),
            "--clients", str(clients)]
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"benchmarks.handshakes did not finish within {seconds + 120:g}s"}
    out = done.stdout
    result: dict[str, object] = {"command": " ".join(["python", *argv[1:]]), "output": out.strip()}
    if done.returncode != 0:
        result["error"] = f"exited {done.returncode}: {done.stderr.strip()[-300:]}"
        return result
    rate = re.search(r"= ([\d,]+)/s \((\d+) failed\)", out)
    core = re.search(r"= ([\d.]+) ms per connection -> ([\d,]+)/s on one core", out)
    if rate is None or core is None:
        result["error"] = "cannot read its output"
        return result
    result.update({"connections_per_second": int(rate.group(1).replace(",", "")), "failed": int(rate.group(2)),
                   "cpu_ms_per_connection": float(core.group(1)),
                   "per_second_on_one_core": int(core.group(2).replace(",", ""))})
    return result


def summarize(results: dict) -> None:
    """Ratios against nginx in the same run, what mTLS adds over plain, and Istio's published figure."""
    targets = results.get("throughput", {}).get("targets", {})
    cpu = {name: t.get("vcpu_s_per_1000") for name, t in targets.items()}
    summary: dict[str, object] = {}

    def ratio(key: str, top: str, bottom: str, field: str) -> None:
        t, b = targets.get(top, {}).get(field), targets.get(bottom, {}).get(field)
        if t and b:
            summary[key] = t / b

    ratio("rps sidecar/nginx", "sidecar", "nginx", "rps_median")
    ratio("cpu sidecar/nginx", "sidecar", "nginx", "vcpu_s_per_1000")
    ratio("cpu A sidecar/nginx", "sidecar", "nginx", "vcpu_s_per_1000_a")
    ratio("cpu B sidecar/nginx", "sidecar", "nginx", "vcpu_s_per_1000_b")
    ratio("rps sidecar-plain/nginx-plain", "sidecar-plain", "nginx-plain", "rps_median")
    ratio("cpu sidecar-plain/nginx-plain", "sidecar-plain", "nginx-plain", "vcpu_s_per_1000")
    for name in ("sidecar", "nginx"):
        mtls, plain = cpu.get(name), cpu.get(f"{name}-plain")
        if mtls and plain:
            summary[f"mtls adds, {name}"] = mtls - plain
            summary[f"mtls adds, {name}, fraction"] = mtls / plain - 1
    if cpu.get("sidecar"):
        per_proxy = cpu["sidecar"] / 2
        summary["sidecar per proxy"] = per_proxy
        summary["sidecar per proxy / istio"] = per_proxy / ISTIO_PER_PROXY
    if cpu.get("nginx"):
        summary["nginx per proxy / istio"] = cpu["nginx"] / 2 / ISTIO_PER_PROXY
    results["summary"] = summary
    hs = results.get("handshakes") or {}
    sidecar_cpu = cpu.get("sidecar")
    nginx_ratio = summary.get("cpu sidecar/nginx")
    results["targets"] = [
        _target("mTLS hop, CPU per request, sidecar / nginx", "<= 2.5x", nginx_ratio, 2.5, "x"),
        _target("mTLS hop, vCPU-s per 1000 requests per proxy (both hops / 2)", "<= 0.10",
                summary.get("sidecar per proxy"), 0.10),
        _target("mTLS hop, vCPU-s per 1000 requests, both hops together", "<= 0.10 (strict reading)",
                sidecar_cpu, 0.10),
        _target("new mTLS handshakes per second on one core", ">= 1,000", hs.get("per_second_on_one_core"), 1000,
                "/s", at_least=True),
    ]


def _target(what: str, target: str, value: object, bound: float, unit: str = "",
            at_least: bool = False) -> dict[str, object]:
    ok = None
    if isinstance(value, int | float):
        ok = value >= bound if at_least else value <= bound
    return {"what": what, "target": target, "value": value, "met": ok, "unit": unit}


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _summary_lines(s: dict) -> list[str]:
    """The ratios against nginx in the same run, what mTLS adds, and Istio's figure, as sentences."""
    lines = []
    if "rps sidecar/nginx" in s:
        lines.append(f"Throughput, sidecar / nginx (mTLS hop): {s['rps sidecar/nginx']:.2f}x.")
    if "cpu sidecar/nginx" in s:
        lines.append(f"CPU per request, sidecar / nginx (mTLS hop, A + B): {s['cpu sidecar/nginx']:.2f}x "
                     f"(A, originating: {s['cpu A sidecar/nginx']:.2f}x; B, terminating: "
                     f"{s['cpu B sidecar/nginx']:.2f}x).")
    if "cpu sidecar-plain/nginx-plain" in s:
        lines.append("CPU per request, the same two hops without TLS, sidecar / nginx: "
                     f"{s['cpu sidecar-plain/nginx-plain']:.2f}x.")
    for name in ("sidecar", "nginx"):
        if f"mtls adds, {name}" in s:
            lines.append(f"What mTLS adds, {name}: {s[f'mtls adds, {name}']:.4f} vCPU-s per 1000 requests "
                         f"(+{s[f'mtls adds, {name}, fraction']:.0%} over its plain two hops).")
    if "sidecar per proxy" in s:
        nginx = (f"; nginx: {s['nginx per proxy / istio']:.2f}x" if "nginx per proxy / istio" in s else "")
        lines.append(f"Per proxy (A + B over 2), sidecar: {s['sidecar per proxy']:.4f} vCPU-s per 1000 requests, "
                     f"{s['sidecar per proxy / istio']:.2f}x Istio's published {ISTIO_PER_PROXY:.2f} vCPU per "
                     f"1000 req/s per proxy{nginx}.")
    return lines


def markdown(results: dict) -> str:
    m = results["machine"]
    plan = results["plan"]
    lines = [f"## mTLS hop: sidecar vs nginx, {m['date']} ({results['mode']} run)", "",
             f"Machine: {m['host']}, {m['cpus_allowed']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
             f"Python {m['python']}. {results['pinning']}.",
             f"`sidecar`: {results.get('sidecar_build', '?')}. Certificates: ECDSA P-256 (proxy.security.certs).", ""]
    targets = results.get("throughput", {}).get("targets", {})
    if targets:
        lines += [f"### Throughput (wrk -t1 -c50 -d{plan['wrk_seconds']}s, median of {plan['rounds']} alternating "
                  "rounds) and CPU per 1000 requests, A + B", "",
                  "| target | req/s (median) | runs | vCPU-s / 1000 req, A + B | A | B | errors |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for name in sorted(targets, key=lambda n: (("direct", *TARGETS).index(n), n)):
            t = targets[name]
            runs = ", ".join(f"{r:,.0f}" for r in t["rps_runs"])
            errors = t["non_2xx"] + t["socket_errors"]
            if name == "direct":
                lines.append(f"| direct (backend) | {t['rps_median']:,.0f} | {runs} | {_fmt(t['vcpu_s_per_1000'])} "
                             f"(backend) | - | - | {errors} |")
                continue
            lines.append(f"| {name} | {t['rps_median']:,.0f} | {runs} | {_fmt(t['vcpu_s_per_1000'])} | "
                         f"{_fmt(t['vcpu_s_per_1000_a'])} | {_fmt(t['vcpu_s_per_1000_b'])} | {errors} |")
        lines.append("")
    lines += _summary_lines(results.get("summary", {}))
    handshakes = results.get("handshakes")
    if handshakes:
        lines.append("")
        if "per_second_on_one_core" in handshakes:
            lines.append(f"Handshakes (`{handshakes['command']}`): {handshakes['connections_per_second']:,} new "
                         f"TLS 1.3 mTLS connections/s measured ({handshakes['failed']} failed); sidecar CPU "
                         f"{handshakes['cpu_ms_per_connection']:.3f} ms per connection -> "
                         f"{handshakes['per_second_on_one_core']:,}/s on one core.")
        else:
            lines.append(f"Handshakes: {handshakes.get('error')}")
    made = results.get("sidecar_tls_handshakes")
    if made:
        lines.append(f"Sidecar A's handshakes to B during the run: {made['full_handshakes']} full, "
                     f"{made['resumed_handshakes']} resumed (keep-alive reuses the rest).")
    lines += ["", "### Targets (BENCHMARKS.md)", "", "| what | target | measured | met |", "| --- | --- | ---: | --- |"]
    for t in results.get("targets", []):
        value = t["value"]
        shown = "-" if value is None else (f"{value:,.0f}" if t["unit"] == "/s" else f"{value:.3f}{t['unit']}")
        met = {True: "yes", False: "NO", None: "n/a"}[t["met"]]
        lines.append(f"| {t['what']} | {t['target']} | {shown} | {met} |")
    if results.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items())]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mtls", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: wrk 1 s, 1 round, handshakes 0.5 s")
    parser.add_argument("--only", help=f"comma-separated targets among {','.join(TARGETS)} (direct is always run)")
    parser.add_argument("--skip-handshakes", action="store_true", help="do not run benchmarks.handshakes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default benchmarks/results)")
    parser.add_argument("--interpreted", action="store_true", help="do not compile: run the interpreted source")
    parser.add_argument("--compiled-tree", help="an existing scripts/build-compiled copy to run the sidecars from "
                        f"(default ${COMPILED_TREE_ENV}, else compiled into the run's temp dir)")
    args = parser.parse_args(argv)
    if args.only:
        wanted = [t.strip() for t in args.only.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in TARGETS]
        if unknown:
            parser.error(f"unknown target(s) {unknown}; choose among {', '.join(TARGETS)}")
        args.targets = [t for t in TARGETS if t in wanted]
    else:
        args.targets = list(TARGETS)
    return args


def run(args: argparse.Namespace) -> dict:
    plan = Plan.make(args.quick)
    nofile = raise_nofile()
    pinning = Pinning.detect()
    note = pinning.note.replace("proxy under test on CPU", "both proxies of the hop (A and B) on CPU")
    results: dict = {"machine": machine(), "mode": "quick" if plan.quick else "full",
                     "plan": {k: v for k, v in plan.__dict__.items() if k in ("quick", "wrk_seconds",
                                                                              "warmup_seconds", "rounds")},
                     "pinning": note, "nofile": nofile, "skipped": {}, "istio_vcpu_per_1000_per_proxy": ISTIO_PER_PROXY,
                     "tools": {"nginx": tool_version([which("nginx") or "nginx", "-v"]) or None,
                               "wrk": which("wrk"), "taskset": which("taskset")}}
    say(f"benchmarks.mtls ({results['mode']}): {note}; open-file limit {nofile}")
    for tool in ("nginx", "wrk"):
        if which(tool) is None:
            raise Skip(f"{tool} not found (Debian package: {tool}); nothing measured")
    with tempfile.TemporaryDirectory(prefix="sidecar-mtls-") as tmp, signals_raise():
        work = Path(tmp)
        rig = Rig(work, pinning)
        try:
            build = interpreted()
            if not args.interpreted and any(t.startswith("sidecar") for t in args.targets):
                say("building the compiled sidecar (scripts/build-compiled, about 1.5 minutes)")
                build = compiled_build(work, args.compiled_tree)
            rig.sidecar_tree = build.tree
            results["sidecar_build"] = build.note
            say(f"sidecar build: {build.note}")
            pki = make_pki(work / "pki")
            backend = start_backend(rig)
            started: dict[str, Hop | Started] = {"direct": backend}
            for name in args.targets:
                try:
                    started[name] = STARTERS[name](rig, backend.port, pki)
                    say(f"started {name}: A on 127.0.0.1:{started[name].port}")
                except Skip as exc:
                    say(f"SKIP {name}: {exc}")
                    results["skipped"][name] = str(exc).splitlines()[0]
            say(f"throughput: wrk -t1 -c50 -d{plan.wrk_seconds}s, {plan.rounds} round(s), alternating")
            try:
                results["throughput"] = {"targets": measure(rig, started, plan)}
            except LoadError as exc:
                say(f"throughput failed: {exc}")
                results["skipped"]["throughput"] = str(exc)
            sidecar = started.get("sidecar")
            if isinstance(sidecar, Hop):
                results["sidecar_tls_handshakes"] = tls_handshakes_made(sidecar)
        finally:
            rig.close()
    if args.skip_handshakes:
        results["skipped"]["handshakes"] = "--skip-handshakes"
    else:
        # After every hop has stopped: its own sidecar on the proxy CPU, clients on the load CPU.
        say("handshakes: python -m benchmarks.handshakes")
        started_at = time.monotonic()
        results["handshakes"] = run_handshakes(build.tree, plan.quick)
        say(f"  {results['handshakes'].get('output') or results['handshakes'].get('error')} "
            f"({time.monotonic() - started_at:.0f}s)")
    summarize(results)
    return results


def write(results: dict, out: Path) -> tuple[Path, Path, str]:
    return write_results(results, out, "-mtls-quick" if results["mode"] == "quick" else "-mtls", markdown(results))


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, write, say, Skip)


if __name__ == "__main__":
    sys.exit(main())
