"""`sidecar demo`: two small demo services (campaign v1 and v2) and the sidecar, on free ports.

Owns the demo services (aiohttp apps answering who they are) and fitting config/demo.yaml to the ports
actually bound, then runs the sidecar in the same process and prints curl commands a newcomer can paste.
Must not change how the sidecar itself runs: it hands a loaded config to the same App the `run` command
uses.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

from proxy.app import App
from proxy.config.load import LoadedConfig, load_config
from proxy.config.model import Address

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"


def demo_service(version: str) -> web.Application:
    """A tiny campaign service: answers its name and version on every path."""

    async def campaigns(request: web.Request) -> web.Response:
        return web.json_response({
            "service": "campaign-service",
            "version": version,
            "path": request.path,
            "x-request-id": request.headers.get("x-request-id"),
            "traceparent": request.headers.get("traceparent"),
        })

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", campaigns)
    return app


async def start_service(version: str) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(demo_service(version), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def _port_free(address: Address) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address.host, address.port))
        except OSError:
            return False
    return True


def fit_config(loaded: LoadedConfig, ports: dict[str, int]) -> LoadedConfig:
    """Point each cluster at its demo service; keep listener/admin ports when free, else pick free ones."""
    config = loaded.config
    clusters = [
        cluster.model_copy(update={"endpoints": [Address(host="127.0.0.1", port=ports[cluster.name])]})
        if cluster.name in ports else cluster
        for cluster in config.clusters
    ]
    listeners = [
        listener if _port_free(listener.address)
        else listener.model_copy(update={"address": Address(host=listener.address.host, port=0)})
        for listener in config.listeners
    ]
    admin = config.admin
    if not _port_free(admin.address):
        admin = admin.model_copy(update={"address": Address(host=admin.address.host, port=0)})
    fitted = config.model_copy(update={"clusters": clusters, "listeners": listeners, "admin": admin})
    return LoadedConfig(fitted, loaded.path, loaded.base_dir, loaded.version_hash, loaded.source_text)


def instructions(app: App) -> str:
    host, port = app.bound["outbound"]
    admin_host, admin_port = app.bound["admin"]
    base = f"http://{host}:{port}"
    admin = f"http://{admin_host}:{admin_port}"
    return "\n".join([
        "",
        "horizon-sidecar demo: campaign-service v1 and v2 behind the sidecar. Try:",
        "",
        "  # header routing: x-version: v2 always reaches v2",
        f"  curl -s -H 'x-version: v2' {base}/api/v1/campaigns",
        "",
        "  # the 90/10 weighted split: count versions over 100 requests",
        f"  for i in $(seq 100); do curl -s {base}/api/v1/campaigns; echo; done | grep -o '\"version\": \"v[12]\"' "
        "| sort | uniq -c",
        "",
        "  # the request id and trace context the sidecar adds (sent back by the demo service)",
        f"  curl -si {base}/api/v1/campaigns/42",
        "",
        "  # metrics, clusters and the config in force",
        f"  curl -s {admin}/metrics | grep sidecar_requests_total",
        f"  curl -s {admin}/clusters",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


async def run_demo(config_path: Path) -> int:
    loaded = load_config(config_path)
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    for version in ("v1", "v2"):
        runner, port = await start_service(version)
        runners.append(runner)
        ports[f"campaign-{version}"] = port
    app = App(fit_config(loaded, ports))
    await app.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, app.request_shutdown)
    print(app.describe_bound(), file=sys.stderr)
    print(instructions(app), flush=True)
    await app.wait_for_shutdown()
    await app.drain_and_stop()
    for runner in runners:
        await runner.cleanup()
    print("demo stopped", file=sys.stderr)
    return 0
