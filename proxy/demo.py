"""`sidecar demo`: two small demo services (campaign v1 and v2) and the sidecar, on free ports.

Owns the demo services (aiohttp apps answering who they are, and who called them over mTLS), the demo's
throwaway development CA and certificates (in a temporary directory, removed on exit), and fitting
config/demo.yaml to them and to the ports actually bound; then runs the sidecar in the same process and
prints curl commands a newcomer can paste. Must not change how the sidecar itself runs: it hands a loaded
config to the same App the `run` command uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from proxy.app import App
from proxy.config.load import ConfigError, LoadedConfig, parse_config, read_config
from proxy.config.model import Address
from proxy.security.certs import init_ca, issue

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
# The ports config/demo.yaml names for the two demo services.
V1_PORT = 18081
V2_PORT = 18082
# The identities of the demo's mTLS hop: the caller (the outbound side's cluster presents it), the callee (the
# inbound listener's), and one from the same CA that the inbound listener does not allow.
CALLER_ID = "spiffe://cluster.local/ns/default/sa/payment-service"
SERVICE_ID = "spiffe://cluster.local/ns/default/sa/campaign-service"
INTRUDER_ID = "spiffe://cluster.local/ns/default/sa/intruder"
XFCC = "x-forwarded-client-cert"


def demo_service(version: str) -> web.Application:
    """A tiny campaign service: answers its name and version; `/api/v1/flaky` fails every other request
    with 503 and `/api/v1/unstable` always does (to show a retry and the breaker)."""
    calls = {"flaky": 0}

    async def campaigns(request: web.Request) -> web.Response:
        if request.path.startswith("/api/v1/unstable"):
            return web.json_response({"version": version, "error": "unstable always fails"}, status=503)
        if request.path.startswith("/api/v1/flaky"):
            calls["flaky"] += 1
            if calls["flaky"] % 2:
                return web.json_response({"version": version, "error": "flaky failure"}, status=503)
        answer = {
            "service": "campaign-service",
            "version": version,
            "path": request.path,
            "x-request-id": request.headers.get("x-request-id"),
            "traceparent": request.headers.get("traceparent"),
            "x-sidecar-attempt": request.headers.get("x-sidecar-attempt"),
        }
        if XFCC in request.headers:  # reached through the mTLS listener: who called, as the sidecar verified
            answer[XFCC] = request.headers[XFCC]
        return web.json_response(answer)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", campaigns)
    return app


async def start_service(version: str, port: int) -> tuple[web.AppRunner, int]:
    """Start a demo service on `port` when it is free, else on a free port; returns the bound port."""
    runner = web.AppRunner(demo_service(version), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port if _port_free(Address(host="127.0.0.1", port=port)) else 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def _port_free(address: Address) -> bool:
    with socket.socket() as sock:
        # As the sidecar binds (SO_REUSEADDR): connections in TIME_WAIT from a run a moment ago do not
        # make a port look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def make_certs(root: Path) -> Path:
    """A throwaway development CA and the demo's certificates in `root/certs/dev`, where config/demo.yaml's
    `../certs/dev/` names them from `root/config`. The inbound listener's certificate also names
    `localhost`, so curl can check it against the CA as a sidecar would check its SPIFFE ID."""
    certs = root / "certs" / "dev"
    init_ca(certs, "cluster.local")
    issue(certs, CALLER_ID, certs / "payment-service")
    issue(certs, SERVICE_ID, certs / "campaign-service", dns_names=["localhost"])
    issue(certs, INTRUDER_ID, certs / "intruder")
    return certs


def load_demo_config(path: Path, root: Path) -> LoadedConfig:
    """Load the file at `path` from a copy in `root/config`, so its relative paths (the certificates) resolve
    in `root`; its problems still name `path`."""
    raw = read_config(path)
    copy = root / "config" / path.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(raw)
    try:
        return parse_config(raw, copy)
    except ConfigError as error:
        raise ConfigError([dataclasses.replace(p, file=str(path)) for p in error.problems]) from None


def fit_config(loaded: LoadedConfig, ports: dict[int, int]) -> LoadedConfig:
    """Point endpoints at the demo services' actual ports (`ports` maps configured -> bound); keep the
    listener and admin ports when free, else pick free ones (endpoints naming a moved listener's port, as
    the mTLS hop's does, follow it)."""
    config = loaded.config
    moved = dict(ports)
    listeners = []
    for listener in config.listeners:
        if not _port_free(listener.address):
            port = _free_port(listener.address.host)
            moved[listener.address.port] = port
            listener = listener.model_copy(update={"address": Address(host=listener.address.host, port=port)})
        listeners.append(listener)
    clusters = [
        cluster.model_copy(update={"endpoints": [
            e.model_copy(update={"address": Address(host=e.address.host,
                                                    port=moved.get(e.address.port, e.address.port))})
            for e in cluster.endpoints]})
        if cluster.endpoints else cluster
        for cluster in config.clusters
    ]
    admin = config.admin
    if not _port_free(admin.address):
        admin = admin.model_copy(update={"address": Address(host=admin.address.host, port=0)})
    fitted = config.model_copy(update={"clusters": clusters, "listeners": listeners, "admin": admin})
    return LoadedConfig(fitted, loaded.path, loaded.base_dir, loaded.version_hash, loaded.source_text)


def instructions(app: App, certs: Path) -> str:
    host, port = app.bound["outbound"]
    admin_host, admin_port = app.bound["admin"]
    base = f"http://{host}:{port}"
    admin = f"http://{admin_host}:{admin_port}"
    mtls: list[str] = []
    if "inbound" in app.bound:
        inbound = app.bound["inbound"][1]
        mtls = [
            "  # mTLS between sidecars: out over mutual TLS as payment-service to the inbound listener, which",
            "  # verifies the caller; the service shows the identity it was handed (URI=caller, By=inbound side)",
            f"  curl -s {base}/mesh/api/v1/campaigns",
            "",
            "  # a caller the inbound listener does not allow (an intruder certificate from the same CA): 403",
            f"  curl -si --cacert {certs / 'ca.pem'} --cert {certs / 'intruder.pem'} "
            f"--key {certs / 'intruder-key.pem'} https://localhost:{inbound}/api/v1/campaigns",
            "",
        ]
    return "\n".join([
        "",
        "horizon-sidecar demo: campaign-service v1 and v2 behind the sidecar. Try, in another terminal:",
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
        "  # a retry: the service fails every other request with 503; the caller sees 200 (attempt 2)",
        f"  curl -s {base}/api/v1/flaky",
        "",
        "  # the breaker: the service's own 503s open it (3 of them); then the sidecar answers 503 itself,",
        "  # at once and without calling the service: its Proxy-Status says destination_unavailable",
        f"  for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} ' {base}/api/v1/unstable; done; echo",
        f"  curl -si {base}/api/v1/unstable | grep -i proxy-status",
        "",
        *mtls,
        "  # metrics, clusters and the config in force",
        f"  curl -s {admin}/metrics | grep -E 'sidecar_(requests|retries|circuit_breaker_state)'",
        f"  curl -s {admin}/clusters",
        f"  curl -s {admin}/config_dump",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


async def run_demo(config_path: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="sidecar-demo-") as tmp:
        certs = make_certs(Path(tmp))
        loaded = load_demo_config(config_path, Path(tmp))
        runners: list[web.AppRunner] = []
        ports: dict[int, int] = {}
        for version, configured in (("v1", V1_PORT), ("v2", V2_PORT)):
            runner, port = await start_service(version, configured)
            runners.append(runner)
            ports[configured] = port
        app = App(fit_config(loaded, ports))
        await app.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, app.request_shutdown)
        print(app.describe_bound(), file=sys.stderr)
        print(instructions(app, certs), flush=True)
        await app.wait_for_shutdown()
        await app.drain_and_stop()
        for runner in runners:
            await runner.cleanup()
    print("demo stopped", file=sys.stderr)
    return 0
