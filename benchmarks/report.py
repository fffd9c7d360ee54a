"""Turn the compare results into the targets check and the markdown table (printed and saved)."""

from __future__ import annotations

from typing import Any

# (what, target text, how to read the measured value from results, the test it must pass)
Check = tuple[str, str, Any, Any]


def _get(results: dict, *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def check_targets(results: dict) -> list[dict[str, object]]:
    """Each target of BENCHMARKS.md with what this run measured and whether it is met (None: not measured)."""
    ratios = _get(results, "throughput", "ratios") or {}
    cpu = _get(results, "cpu", "per_target") or {}
    added = _get(results, "latency", "added_over_direct", "sidecar") or {}
    mem = results.get("memory") or {}
    conns = mem.get("idle_connections") or {}
    quick = results.get("mode") == "quick"
    rows: list[tuple[str, str, float | None, bool | None, str]] = []

    def add(what: str, target: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        rows.append((what, target, value, ok, unit))

    def at_least(value: float | None, bound: float) -> bool | None:
        return None if value is None else value >= bound

    def at_most(value: float | None, bound: float) -> bool | None:
        return None if value is None else value <= bound

    value = ratios.get("sidecar/nginx")
    add("throughput, sidecar / nginx", ">= 0.5", value, at_least(value, 0.5), "x")
    value = ratios.get("sidecar/aiohttp")
    add("throughput, sidecar / naive aiohttp proxy", ">= 5", value, at_least(value, 5), "x")
    value = cpu.get("sidecar")
    add("CPU, vCPU-s per 1000 requests", "<= 0.05", value, at_most(value, 0.05))
    value = cpu.get("sidecar/nginx")
    add("CPU per request relative to nginx", "<= 2.5x", value, at_most(value, 2.5), "x")
    value = added.get("p50_ms")
    add("added latency p50 at 1000 req/s", "<= 0.1 ms", value, at_most(value, 0.1), " ms")
    value = added.get("p99_ms")
    add("added latency p99 at 1000 req/s", "<= 0.5 ms", value, at_most(value, 0.5), " ms")
    value = mem.get("idle_rss_mb")
    add("idle RSS, workers: 1, all processes", "<= 50 MB", value, at_most(value, 50), " MB")
    value = conns.get("rss_mb")
    opened = conns.get("opened")
    # In quick mode (1,000 connections) the 10,000-connection target cannot be judged.
    ok = None if quick or opened is None or opened < 10_000 else at_most(value, 150)
    add(f"RSS with {opened or 0:,} idle keep-alive connections", "<= 150 MB (10,000)", value, ok, " MB")
    for direction in ("upload", "download"):
        value = (mem.get(direction) or {}).get("max_growth_mb")
        size = (mem.get(direction) or {}).get("bytes")
        ok = None if quick else at_most(value, 20)
        label = f"{size / 2**20:.0f} MiB" if size else "stream"
        add(f"RSS growth streaming {label} {direction}", "<= 20 MB (1 GiB)", value, ok, " MB")
    return [{"what": w, "target": t, "measured": v, "met": ok, "unit": u} for w, t, v, ok, u in rows]


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"## Sidecar vs peers, {m['date']} ({results['mode']} run)",
        "",
        f"Machine: {m['host']}, {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
        f"Python {m['python']}. {results['pinning']}.",
    ]
    if results.get("sidecar_build"):
        lines.append(f"`sidecar`: {results['sidecar_build']}; `sidecar-py`: the same source, interpreted.")
    for name, why in (results.get("skipped") or {}).items():
        lines.append(f"Skipped {name}: {why}.")
    tp = results.get("throughput")
    if tp:
        plan = results["plan"]
        lines += ["", f"### Throughput (wrk -t1 -c50 -d{plan['wrk_seconds']}s, median of {plan['rounds']} "
                      "alternating rounds) and CPU per request", "",
                  "| target | req/s (median) | runs | vCPU-s / 1000 req | sidecar / target |",
                  "| --- | ---: | --- | ---: | ---: |"]
        ratios = tp.get("ratios", {})
        for name, t in tp["targets"].items():
            runs = ", ".join(f"{r:,.0f}" for r in t["rps_runs"])
            errors = t["non_2xx"] + t["socket_errors"]
            flag = f" ({errors} errors)" if errors else ""
            lines.append(f"| {name}{' (backend)' if name == 'direct' else ''} | {t['rps_median']:,.0f}{flag} | "
                         f"{runs} | {_fmt(t['vcpu_s_per_1000'], 4)} | {_fmt(ratios.get(f'sidecar/{name}'))} |")
        if "note" in tp:
            lines += ["", f"Note: {tp['note']}."]
        per_target = (results.get("cpu") or {}).get("per_target", {})
        for peer, label in (("nginx", "nginx"), ("pyfloor", "pyfloor (the Python floor of this design)"),
                            ("sidecar-py", "sidecar-py (compiling's gain)")):
            cpu_ratio = per_target.get(f"sidecar/{peer}")
            if cpu_ratio is not None:
                lines.append(f"CPU per request, sidecar / {label}: {cpu_ratio:.2f}x.")
    lat = results.get("latency")
    if lat:
        lines += ["", "### Latency at 1000 req/s (hey -c 10 -q 100; single latencies quantised to 0.1 ms)", "",
                  "| target | p50 ms | p99 ms | mean ms | added p50 | added p99 | added mean |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        added = lat.get("added_over_direct", {})
        for name, t in lat["targets"].items():
            if "p50_ms" not in t:
                lines.append(f"| {name} | error: {t.get('error', '?')} | | | | | |")
                continue
            a = added.get(name, {})
            lines.append(f"| {name} | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | {t['mean_ms']:.3f} | "
                         f"{_fmt(a.get('p50_ms'))} | {_fmt(a.get('p99_ms'))} | {_fmt(a.get('mean_ms'), 3)} |")
    workers = results.get("workers")
    if workers:
        lines += ["", "### Sidecar workers (all pinned to the proxy CPU)", "",
                  "| workers | req/s (median) | vCPU-s / 1000 req | processes |", "| --- | ---: | ---: | ---: |"]
        for n, w in workers.items():
            if "skipped" in w:
                lines.append(f"| {n} | skipped: {w['skipped']} | | |")
            else:
                lines.append(f"| {n} | {w['rps_median']:,.0f} | {_fmt(w['vcpu_s_per_1000'], 4)} | "
                             f"{w.get('processes', '-')} |")
    mem = results.get("memory")
    if mem:
        conns = mem.get("idle_connections", {})
        lines += ["", "### Sidecar memory (RSS summed over all its processes; MB = 10^6 bytes)", "",
                  "| measurement | MB |", "| --- | ---: |",
                  f"| idle ({mem.get('processes')} process(es)) | {_fmt(mem.get('idle_rss_mb'), 1)} |",
                  f"| with {conns.get('opened', 0):,} idle keep-alive connections | {_fmt(conns.get('rss_mb'), 1)} "
                  f"(+{_fmt(conns.get('growth_mb'), 1)}, {_fmt(conns.get('kib_per_connection'), 1)} KiB each) |"]
        for direction in ("upload", "download"):
            s = mem.get(direction) or {}
            if "error" in s:
                lines.append(f"| {direction}: failed ({s['error']}) | - |")
            elif s:
                lines.append(f"| max growth streaming {s['bytes'] / 2**20:,.0f} MiB {direction} "
                             f"({s['mb_per_s']} MB/s, status {s['status']}) | {_fmt(s['max_growth_mb'], 1)} |")
    lines += ["", "### Targets (BENCHMARKS.md)", "", "| what | target | measured | met |", "| --- | --- | ---: | --- |"]
    for row in results.get("targets", []):
        met = {True: "yes", False: "NO", None: "n/a"}[row["met"]]
        value = row["measured"]
        digits = 4 if isinstance(value, float) and abs(value) < 0.1 else 2
        lines.append(f"| {row['what']} | {row['target']} | {_fmt(value, digits, row['unit'])} | {met} |")
    return "\n".join(lines) + "\n"
