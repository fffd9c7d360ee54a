"""The targets: the nginx backend, and each proxy in front of it, started from benchmarks/configs/.

A peer is started pinned to the proxy CPU with one worker and keep-alive to the backend; `start_*`
returns a `Started` (process + port) or raises `Skip` with the reason (a missing binary, a sidecar that
refuses `workers: N`). Configs are templates with `{{name}}` placeholders, written into the run's temp dir.
"""

from __future__ import annotations

import os
import re
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.rig import REPO, Proc, Rig, free_port, wait_ready, which

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Targets in the order they are reported; "direct" is wrk/hey straight to the backend.
# `sidecar` is the build that ships (compiled, when it could be built); `sidecar-py` the same source
# interpreted, so the run shows what compiling buys.
PROXIES = ("nginx", "haproxy", "caddy", "aiohttp", "pyfloor", "sidecar", "sidecar-py")
ALL_TARGETS = ("direct", *PROXIES)
# Opt-in targets (`--only`, `--telemetry`): the sidecar's realistic config with telemetry on.
TELEMETRY_TARGETS = ("sidecar-trace0", "sidecar-trace1", "sidecar-trace100", "sidecar-accesslog")
BINARIES = {"nginx": "nginx", "haproxy": "haproxy", "caddy": "caddy"}


class Skip(Exception):
    """This target cannot run here; the message says why."""


@dataclass
class Started:
    """A running target: where to send load, and the process tree to measure."""

    name: str
    proc: Proc
    port: int


def render(template: str, **values: object) -> str:
    text = (CONFIGS / template).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    return text


def write_config(rig: Rig, name: str, text: str) -> Path:
    path = rig.workdir / name
    path.write_text(text)
    return path


def nginx_user() -> str:
    # As root, nginx would switch its worker to `nobody`, which cannot use the temp dir: stay root.
    return "user root;" if os.geteuid() == 0 else ""


def _ready(rig: Rig, started: Started, timeout: float = 15.0) -> Started:
    problem = wait_ready(started.proc, started.port, timeout)
    if problem is not None:
        rig.stop(started.proc)
        raise Skip(problem)
    return started


def start_backend(rig: Rig) -> Started:
    """The nginx backend on the load CPU (it shares CPU 0 with the load generator, as the rig says)."""
    nginx = which("nginx")
    if nginx is None:
        raise Skip("nginx not found: it is the backend, nothing can run (apt-get install nginx)")
    port = free_port()
    conf = write_config(rig, "backend-nginx.conf",
                  render("backend-nginx.conf", user=nginx_user(), dir=rig.workdir, port=port))
    proc = rig.start("backend", [nginx, "-p", str(rig.workdir), "-c", str(conf)], rig.pinning.load)
    return _ready(rig, Started("backend", proc, port))


def start_nginx(rig: Rig, backend_port: int) -> Started:
    nginx = _binary("nginx")
    port = free_port()
    conf = write_config(rig, "nginx-proxy.conf", render("nginx-proxy.conf", user=nginx_user(), dir=rig.workdir,
                                                  port=port, backend_port=backend_port))
    proc = rig.start("nginx", [nginx, "-p", str(rig.workdir), "-c", str(conf)], rig.pinning.proxy)
    return _ready(rig, Started("nginx", proc, port))


def start_haproxy(rig: Rig, backend_port: int) -> Started:
    haproxy = _binary("haproxy")
    port = free_port()
    # HAProxy wants 2 fds per connection and refuses to start when maxconn exceeds the open-file limit.
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    maxconn = max(256, min(20000, (soft - 200) // 2))
    conf = write_config(rig, "haproxy.cfg", render("haproxy.cfg", dir=rig.workdir, port=port, backend_port=backend_port,
                                             maxconn=maxconn))
    # -db: stay in the foreground (the rig owns the process and kills its group).
    proc = rig.start("haproxy", [haproxy, "-db", "-f", str(conf)], rig.pinning.proxy)
    return _ready(rig, Started("haproxy", proc, port))


def start_caddy(rig: Rig, backend_port: int) -> Started:
    caddy = _binary("caddy")
    port = free_port()
    conf = write_config(rig, "Caddyfile", render("Caddyfile", port=port, backend_port=backend_port))
    home = rig.workdir / "caddy-home"
    home.mkdir(exist_ok=True)
    # Caddy keeps state under $HOME / XDG dirs: point them at the temp dir so nothing outside is touched.
    env = {"GOMAXPROCS": "1", "HOME": str(home), "XDG_DATA_HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    proc = rig.start("caddy", [caddy, "run", "--config", str(conf), "--adapter", "caddyfile"],
                     rig.pinning.proxy, env=env)
    return _ready(rig, Started("caddy", proc, port))


def start_aiohttp(rig: Rig, backend_port: int) -> Started:
    port = free_port()
    proc = rig.start("aiohttp", [sys.executable, "-m", "benchmarks.peers.aiohttp_proxy", "--port", str(port),
                                 "--upstream", f"127.0.0.1:{backend_port}"], rig.pinning.proxy, cwd=REPO)
    return _ready(rig, Started("aiohttp", proc, port))


def pyfloor_argv(port: int, backend_port: int) -> list[str]:
    """The Python floor peer's command line (also run under valgrind by benchmarks.instructions)."""
    return [sys.executable, "-m", "benchmarks.peers.raw_proxy", "--port", str(port), "--upstream",
            f"127.0.0.1:{backend_port}"]


def start_pyfloor(rig: Rig, backend_port: int) -> Started:
    """benchmarks/peers/raw_proxy.py: the sidecar's building blocks and nothing else (the floor)."""
    port = free_port()
    proc = rig.start("pyfloor", pyfloor_argv(port, backend_port), rig.pinning.proxy, cwd=REPO)
    return _ready(rig, Started("pyfloor", proc, port))


def sidecar_config(backend_port: int, workers: int = 1, stream_port: int | None = None) -> tuple[str, int, int]:
    """The realistic config (YAML text), its listener port and its admin port."""
    port, admin_port = free_port(), free_port()
    extra_routes = extra_clusters = ""
    if stream_port is not None:
        extra_routes = (CONFIGS / "sidecar-stream.yaml").read_text().rstrip("\n")
        extra_clusters = render("sidecar-stream-cluster.yaml", stream_port=stream_port).rstrip("\n")
    text = render("sidecar.yaml", workers=workers, port=port, admin_port=admin_port, backend_port=backend_port,
                  extra_routes=extra_routes, extra_clusters=extra_clusters)
    return text, port, admin_port


def sidecar_minimal_config(backend_port: int) -> tuple[str, int, int]:
    """The minimal config (one route to one cluster; YAML text), its listener port and its admin port."""
    port, admin_port = free_port(), free_port()
    return render("sidecar-minimal.yaml", port=port, admin_port=admin_port, backend_port=backend_port), port, admin_port


# The realistic config with telemetry on (opt-in targets of compare, `--config telemetry` of instructions):
# span export over OTLP/HTTP to the nginx backend (it answers the POSTs 200) at 0 %, 1 % and 100 % head
# sampling, and the JSON access log of every request to a file beside the config (the rig's temp dir).
TELEMETRY_VARIANTS: dict[str, dict[str, float]] = {
    "sidecar-trace0": {"sampling": 0.0}, "sidecar-trace1": {"sampling": 0.01}, "sidecar-trace100": {"sampling": 1.0},
    "sidecar-accesslog": {"access_log": 1.0},
}


def telemetry_config(backend_port: int, variant: str) -> tuple[str, int, int]:
    """The realistic config with the telemetry of `variant` (a TELEMETRY_VARIANTS name)."""
    text, port, admin = sidecar_config(backend_port)
    settings = TELEMETRY_VARIANTS[variant]
    if "sampling" in settings:
        otlp = f"otlp: {{endpoint: 'http://127.0.0.1:{backend_port}/v1/traces'}}"
        traced = re.sub(r"(?m)^  sampling: .*$", f"  sampling: {settings['sampling']}\n  {otlp}", text)
        if traced == text:
            raise ValueError("the realistic config has no tracing.sampling line to replace")
        text = traced
    if "access_log" in settings:
        text += "\naccess_log: {format: json, path: access.log}\n"
    return text, port, admin


def start_sidecar(rig: Rig, backend_port: int, workers: int = 1, stream_port: int | None = None,
                  name: str = "sidecar", tree: Path | None = None, variant: str | None = None) -> Started:
    """`python -m proxy run -c <generated yaml>` on the proxy CPU (all its workers share that CPU), run from
    `tree` (default: the rig's sidecar build); `variant`: a telemetry variant of the realistic config."""
    if variant is not None:
        text, port, _admin = telemetry_config(backend_port, variant)
    else:
        text, port, _admin = sidecar_config(backend_port, workers, stream_port)
    conf = write_config(rig, f"{name}.yaml", text)
    proc = rig.start(name, [sys.executable, "-m", "proxy", "run", "-c", str(conf)], rig.pinning.proxy,
                     cwd=tree or rig.sidecar_tree)
    problem = wait_ready(proc, port, timeout=20.0)
    if problem is not None:
        rig.stop(proc)
        if "not supported yet" in problem:
            raise Skip(f"the sidecar refuses workers: {workers} (not supported yet)")
        raise Skip(problem)
    return Started(name, proc, port)


def start_sidecar_interpreted(rig: Rig, backend_port: int) -> Started:
    """The sidecar from the repository's own source, interpreted (whatever build `sidecar` runs)."""
    return start_sidecar(rig, backend_port, name="sidecar-py", tree=REPO)


def _binary(name: str) -> str:
    path = which(BINARIES[name])
    if path is None:
        raise Skip(f"{BINARIES[name]} not found: skipping the {name} peer (Debian package: {BINARIES[name]})")
    return path


def _variant_starter(variant: str) -> Callable[[Rig, int], Started]:
    def start(rig: Rig, backend_port: int) -> Started:
        return start_sidecar(rig, backend_port, name=variant, variant=variant)
    return start


STARTERS = {
    "nginx": start_nginx,
    "haproxy": start_haproxy,
    "caddy": start_caddy,
    "aiohttp": start_aiohttp,
    "pyfloor": start_pyfloor,
    "sidecar": start_sidecar,
    "sidecar-py": start_sidecar_interpreted,
    **{variant: _variant_starter(variant) for variant in TELEMETRY_VARIANTS},
}
