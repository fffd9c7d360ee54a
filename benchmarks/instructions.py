"""Deterministic cost per request: user-space instructions per request under callgrind.

`python -m benchmarks.instructions` starts the nginx backend of the rig, then each target in turn under
`valgrind --tool=callgrind --instr-atstart=no` (the sidecar with the realistic and/or minimal config, and
with `--pyfloor` the Python floor peer), waits for it to answer, warms it up (`hey -n 300 -c 10`), switches
instrumentation on and zeroes the counters (`callgrind_control -i on`, `-z`), sends exactly N requests
(`hey -n N -c 10`), dumps the counters (`callgrind_control -d`) and divides the dump's total (`summary:`,
what `callgrind_annotate` prints as PROGRAM TOTALS) by N. Only the measured requests are counted: not the
start-up, not the warm-up. It counts the instructions the process executes in user space (the
interpreter, the C extensions, libc); the kernel's socket work is not counted, and is the same for every
Python design. Unlike wall-clock ratios (which drift +-30 % on a shared VM), the count barely moves from
run to run: it is the A/B measure for changes to the request path. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.build import SidecarBuild, compiled_build, interpreted
from benchmarks.load import LoadError, run_tool
from benchmarks.peers import (
    TELEMETRY_VARIANTS,
    Skip,
    pyfloor_argv,
    sidecar_config,
    sidecar_minimal_config,
    start_backend,
    telemetry_config,
)
from benchmarks.rig import REPO, Pinning, Proc, Rig, free_port, http_get, machine, signals_raise, tool_version, which

# What this needs and what for; when one is missing the run is skipped with this message (exit 0).
NEEDED: dict[str, str] = {
    "valgrind": "runs each target under callgrind (Debian package: valgrind)",
    "callgrind_control": "zeroes and dumps the counters of the running target (Debian package: valgrind)",
    "hey": "sends the warm-up and the measured requests (Debian package: hey)",
    "nginx": "the backend (Debian package: nginx)",
}
CONFIGS = ("realistic", "minimal")
# `--config telemetry`: the realistic config with telemetry on (benchmarks.peers.TELEMETRY_VARIANTS: span
# export at 0 %, 1 % and 100 % head sampling). Callgrind counts every thread of the process, so the export
# thread's span building, protobuf encoding and HTTP posts are in the count.
TELEMETRY = tuple(TELEMETRY_VARIANTS)
WARMUP_REQUESTS = 300
CONCURRENCY = 10
START_TIMEOUT = 180.0  # seconds until a target under valgrind answers (it starts in ~3-10 s)
CONTROL_TIMEOUT = 60.0  # one callgrind_control command
# hey under valgrind: the slowest target here serves ~100 req/s; allow 10x that plus a margin.
SECONDS_PER_REQUEST = 0.1


def say(message: str) -> None:
    """Progress goes to stderr; stdout carries only the final table."""
    print(message, file=sys.stderr, flush=True)


class Failed(Exception):
    """A measurement could not be made; the message says why."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per target (default 2000)")
    parser.add_argument("--config", choices=(*CONFIGS, "both", "telemetry"), default="both",
                        help="the sidecar config(s) to count (default both)")
    parser.add_argument("--pyfloor", action="store_true", help="also count the Python floor peer (raw_proxy.py)")
    parser.add_argument("--build", choices=("compiled", "interpreted", "both"), default="both",
                        help="which sidecar build to count: compiled (`sidecar-*`, what ships, built with "
                        "scripts/build-compiled or taken from $SIDECAR_COMPILED_TREE), interpreted "
                        "(`sidecar-py-*`), or both (default)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    return args


def missing_tools() -> list[str]:
    return [f"{tool} ({purpose})" for tool, purpose in NEEDED.items() if which(tool) is None]


def interpreter() -> str:
    """The real interpreter binary: valgrind would run a shell shim (pyenv) and lose the exec'd Python."""
    path = Path(sys.executable)
    with path.open("rb") as binary:
        if binary.read(2) == b"#!":
            raise Skip(f"{path} is a script, not the interpreter binary: valgrind cannot follow it")
    return str(path)


def send(pinning: Pinning, port: int, requests: int) -> int:
    """`hey -n N -c 10` on the load CPU; the number of 200 responses (raises unless all N are 200)."""
    argv = pinning.wrap(pinning.load, ["hey", "-n", str(requests), "-c", str(CONCURRENCY), "-cpus", "1",
                                       f"http://127.0.0.1:{port}/"])
    out = run_tool(argv, timeout=60 + requests * SECONDS_PER_REQUEST)
    statuses = {int(code): int(count) for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    if statuses.get(200, 0) != requests:
        errors = out[out.find("Error distribution"):].strip()[:300] if "Error distribution" in out else ""
        raise Failed(f"expected {requests} responses 200, hey saw {statuses or 'none'} {errors}".strip())
    return requests


def wait_answering(proc: Proc, port: int, timeout: float = START_TIMEOUT) -> None:
    """Poll GET / until 200 (each try may take seconds under valgrind); raise Failed on death or timeout."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise Failed(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            status, _ = http_get(port, timeout=min(30.0, max(1.0, deadline - time.monotonic())))
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.2)
    raise Failed(f"{proc.name} not answering after {timeout:g}s ({last}):\n{proc.log_tail()}")


def read_total(dump: Path) -> int:
    """The dump's `summary:` line: every instruction counted since the counters were zeroed."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise Failed(f"no `summary:` line in {dump}")


def count(rig: Rig, name: str, argv: list[str], port: int, requests: int, cwd: Path) -> dict[str, Any]:
    """Run `argv` under callgrind, count the instructions of exactly `requests` requests; stop it."""
    out_file = rig.workdir / f"callgrind.{name}"
    prefix = rig.workdir / "vgdb"  # the control FIFOs live in the temp dir, removed with it
    control = ["callgrind_control", f"--vgdb-prefix={prefix}"]
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}.%p",
                f"--vgdb-prefix={prefix}", *argv]
    started_at = time.monotonic()
    # PYTHONHASHSEED fixed: string hashes (dict and set layouts) are the same from run to run.
    proc = rig.start(name, valgrind, rig.pinning.proxy, env={"PYTHONHASHSEED": "0"}, cwd=cwd)
    try:
        wait_answering(proc, port)
        say(f"  {name}: answering under valgrind after {time.monotonic() - started_at:.1f}s; "
            f"warm-up {WARMUP_REQUESTS} requests")
        send(rig.pinning, port, WARMUP_REQUESTS)
        pid = str(proc.pid)  # taskset and valgrind exec: the pid is the interpreter's
        run_tool([*control, "--instr=on", pid], CONTROL_TIMEOUT)
        run_tool([*control, "--zero", pid], CONTROL_TIMEOUT)
        measure_start = time.monotonic()
        send(rig.pinning, port, requests)
        seconds = time.monotonic() - measure_start
        run_tool([*control, "--dump", pid], CONTROL_TIMEOUT)
        dump = Path(f"{out_file}.{pid}.1")
        deadline = time.monotonic() + 10.0
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not dump.exists():
            raise Failed(f"callgrind wrote no dump {dump.name}:\n{proc.log_tail()}")
        total = read_total(dump)
    finally:
        rig.stop(proc)
    per_request = total / requests
    say(f"  {name}: {total:,} instructions / {requests} requests = {per_request:,.0f} per request "
        f"({seconds:.1f}s measured, {time.monotonic() - started_at:.1f}s in all)")
    return {"requests": requests, "instructions": total, "per_request": round(per_request),
            "measured_seconds": round(seconds, 1)}


def targets(rig: Rig, backend_port: int, configs: list[str], builds: list[SidecarBuild],
            pyfloor: bool) -> list[tuple[str, list[str], int, Path]]:
    """(name, argv, port, working dir) of each target to count, with its config written to the temp dir."""
    python = interpreter()
    makers: dict[str, Callable[[int], tuple[str, int, int]]] = {
        "realistic": sidecar_config, "minimal": sidecar_minimal_config,
        **{name: variant_config(name) for name in TELEMETRY}}
    out: list[tuple[str, list[str], int, Path]] = []
    for build in builds:
        kind = "sidecar" if build.compiled or len(builds) == 1 else "sidecar-py"
        for config in configs:
            text, port, _admin = makers[config](backend_port)
            path = rig.workdir / f"{kind}-{config}.yaml"
            path.write_text(text)
            out.append((f"{kind}-{config}", [python, "-m", "proxy", "run", "-c", str(path)], port, build.tree))
    if pyfloor:
        port = free_port()
        out.append(("pyfloor", [python, *pyfloor_argv(port, backend_port)[1:]], port, REPO))
    return out


def variant_config(variant: str) -> Callable[[int], tuple[str, int, int]]:
    def make(backend_port: int) -> tuple[str, int, int]:
        return telemetry_config(backend_port, variant)
    return make


def run(args: argparse.Namespace) -> dict[str, Any]:
    pinning = Pinning.detect()
    configs = {"both": list(CONFIGS), "telemetry": ["realistic", *TELEMETRY]}.get(args.config, [args.config])
    results: dict[str, Any] = {
        "machine": machine(), "pinning": pinning.note, "valgrind": tool_version(["valgrind", "--version"]),
        "unit": "user-space instructions per request (callgrind Ir)", "concurrency": CONCURRENCY,
        "warmup_requests": WARMUP_REQUESTS}
    counted: dict[str, dict[str, Any]] = {}
    results["targets"] = counted
    say(f"benchmarks.instructions: {args.requests} requests per target, hey -c {CONCURRENCY}; {pinning.note}")
    with tempfile.TemporaryDirectory(prefix="sidecar-instr-") as tmp, signals_raise():
        rig = Rig(Path(tmp), pinning)
        try:
            backend = start_backend(rig)
            builds: list[SidecarBuild] = []
            if args.build in ("compiled", "both"):
                say("building the compiled sidecar (scripts/build-compiled, about 1.5 minutes)")
                compiled = compiled_build(Path(tmp))
                say(f"sidecar build: {compiled.note}")
                builds.append(compiled)
            if args.build == "interpreted" or (args.build == "both" and builds[0].compiled):
                builds.append(interpreted())
            results["builds"] = [b.note for b in builds]
            for name, argv, port, cwd in targets(rig, backend.port, configs, builds, args.pyfloor):
                say(f"{name}: starting under callgrind")
                try:
                    counted[name] = count(rig, name, argv, port, args.requests, cwd)
                except (Failed, LoadError) as exc:
                    say(f"  {name}: FAILED: {exc}")
                    counted[name] = {"error": str(exc).splitlines()[0]}
        finally:
            rig.close()
    floor = counted.get("pyfloor", {}).get("per_request")
    if isinstance(floor, int) and floor:
        results["ratios"] = {f"{name}/pyfloor": round(t["per_request"] / floor, 2)
                             for name, t in counted.items() if name != "pyfloor" and "per_request" in t}
    return results


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"## Instructions per request, {m['date']}", "",
             f"Machine: {m['host']}, Python {m['python']}, {results['valgrind']}; user-space instructions only "
             f"(callgrind Ir), hey -c {results['concurrency']} after {results['warmup_requests']} warm-up requests.",
             "", "| target | requests | instructions | per request | / pyfloor |",
             "| --- | ---: | ---: | ---: | ---: |"]
    ratios = results.get("ratios") or {}
    for name, t in results["targets"].items():
        if "error" in t:
            lines.append(f"| {name} | failed: {t['error']} | | | |")
            continue
        ratio = ratios.get(f"{name}/pyfloor")
        lines.append(f"| {name} | {t['requests']:,} | {t['instructions']:,} | {t['per_request']:,} | "
                     f"{f'{ratio:.2f}x' if ratio is not None else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        say("SKIP benchmarks.instructions: missing " + "; ".join(missing) + ". Nothing was measured.")
        return 0
    try:
        results = run(args)
    except Skip as exc:
        say(f"cannot run: {exc}")
        return 2
    print(table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
        say(f"wrote {args.json}")
    failed = [name for name, t in results["targets"].items() if "error" in t]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
