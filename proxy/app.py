"""The composition root: builds clusters, listeners, routes and the admin server from a loaded config.

Owns the lifecycle start -> ready -> drain -> stop, the refusal of keys whose feature does not exist
yet ("not supported yet: key.path"), and the admin view of the running state (`AdminSource`). Each
concern compiles its own config into runtime objects here, once. Must not parse requests or hold
per-request state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import Any

from prometheus_client import CollectorRegistry

from proxy.admin.server import AdminServer
from proxy.clock import Clock
from proxy.config.load import LoadedConfig, redacted_dump
from proxy.config.model import Config, Listener
from proxy.discovery.static import static_endpoints
from proxy.filters.trace import TracePropagator
from proxy.http.server import ServerSettings, create_protocol_factory
from proxy.outbound import OutboundListener, build_router
from proxy.routing.table import RouteTable
from proxy.telemetry.exposition import render_metrics
from proxy.telemetry.metrics import Metrics
from proxy.upstream.cluster import Cluster

log = logging.getLogger("proxy.app")


def unsupported_keys(config: Config) -> list[str]:
    """Key paths the config uses whose feature is built by a later issue (refused by `run`)."""
    found: list[str] = []
    if config.workers != 1:
        found.append("workers")
    if config.drain_delay:
        found.append("drain_delay")
    if config.tracing.otlp is not None:
        found.append("tracing.otlp")
    if config.access_log is not None:
        found.append("access_log")
    for i, listener in enumerate(config.listeners):
        where = f"listeners[{i}]"
        if listener.tls is not None:
            found.append(f"{where}.tls")
        for j, route in enumerate(listener.routes):
            if route.authz is not None:
                found.append(f"{where}.routes[{j}].authz")
    for i, cluster in enumerate(config.clusters):
        where = f"clusters[{i}]"
        if cluster.discovery is not None:
            kind = "kubernetes" if cluster.discovery.kubernetes is not None else "dns"
            found.append(f"{where}.discovery.{kind}")
        if cluster.load_balancer != "round_robin":
            found.append(f"{where}.load_balancer")
        if cluster.tls is not None:
            found.append(f"{where}.tls")
    return found


def server_settings(listener: Listener) -> ServerSettings:
    http = listener.http
    return ServerSettings(
        max_head_bytes=http.max_request_headers,
        max_headers=http.max_headers,
        header_read_timeout=http.header_read_timeout,
        idle_timeout=http.idle_timeout,
        max_request_body=http.max_request_body,
        max_requests_in_flight=http.max_requests_in_flight,
        scheme=b"https" if listener.tls is not None else b"http",
    )


class App:
    """One running sidecar process: its listeners, clusters, metrics and admin server."""

    def __init__(self, loaded: LoadedConfig, clock: Clock | None = None) -> None:
        self.loaded = loaded
        self.clock = clock or Clock()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.clusters: dict[str, Cluster] = {}
        self.listeners: dict[str, OutboundListener] = {}
        self.servers: dict[str, asyncio.Server] = {}
        self.bound: dict[str, tuple[str, int]] = {}
        self.admin: AdminServer | None = None
        self.draining = False
        self.stopped = asyncio.Event()
        self._shutdown_requested = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- building ----------------------------------------------------------------------------------

    def _build_clusters(self) -> None:
        for config in self.loaded.config.clusters:
            cluster = Cluster(config, self.metrics, self.clock)
            if config.endpoints is not None:
                cluster.set_endpoints(static_endpoints(config.endpoints))
            self.clusters[config.name] = cluster

    async def start(self) -> None:
        """Bind every listener and the admin server; ready once all are bound and clusters known."""
        config = self.loaded.config
        self._build_clusters()
        for cluster in self.clusters.values():
            if cluster.outlier is not None:
                task = asyncio.create_task(self._outlier_timer(cluster), name=f"outlier {cluster.name}")
                self._tasks.add(task)
        rng = self.clock.random
        trace = TracePropagator.from_config(list(config.tracing.propagation), config.tracing.sampling,
                                            random.Random(rng.random()))
        loop = asyncio.get_running_loop()
        for listener_config in config.listeners:
            table = RouteTable.from_config(listener_config.routes)
            router = build_router(listener_config.name, table, self.clusters, self.metrics, self.clock)
            listener = OutboundListener(listener_config.name, server_settings(listener_config), router, trace,
                                        self.metrics, self.clock)
            address = listener_config.address
            server = await loop.create_server(
                create_protocol_factory(listener), address.host, address.port,
                reuse_address=True, backlog=1024)
            sock = server.sockets[0]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            bound = sock.getsockname()
            self.listeners[listener_config.name] = listener
            self.servers[listener_config.name] = server
            self.bound[listener_config.name] = (str(bound[0]), int(bound[1]))
        admin_address = config.admin.address
        self.admin = AdminServer(AdminView(self), admin_address.host, admin_address.port)
        admin_port = await self.admin.start()
        self.bound["admin"] = (admin_address.host, admin_port)

    def describe_bound(self) -> str:
        parts = [f"{name}={_fmt(host, port)}" for name, (host, port) in self.bound.items() if name != "admin"]
        host, port = self.bound["admin"]
        return f"listening: {' '.join(parts) or '(no listeners)'}; admin {_fmt(host, port)}"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def wait_for_shutdown(self) -> None:
        await self._shutdown_requested.wait()

    def request_shutdown(self) -> None:
        """SIGTERM, SIGINT or POST /shutdown: /ready turns 503 at once, then the drain runs."""
        self.draining = True
        self._shutdown_requested.set()

    async def _outlier_timer(self, cluster: Cluster) -> None:
        """Outlier detection decides ejections here, every `interval`, off the request path."""
        assert cluster.outlier is not None
        interval = cluster.outlier.interval
        while True:
            await asyncio.sleep(interval)
            try:
                cluster.evaluate_outliers()
            except Exception:
                log.exception("outlier detection failed for cluster %s", cluster.name)

    async def drain_and_stop(self) -> None:
        """Stop accepting, close idle keep-alive connections, finish in-flight requests, then stop."""
        self.draining = True
        config = self.loaded.config
        for server in self.servers.values():
            server.close()
        for listener in self.listeners.values():
            listener.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.drain_timeout
        while loop.time() < deadline and any(listener.connections for listener in self.listeners.values()):
            await asyncio.sleep(0.05)
        for listener in self.listeners.values():
            for conn in list(listener.connections):
                conn.abort()
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        for cluster in self.clusters.values():
            cluster.close()
        if self.admin is not None:
            await self.admin.stop()
        self.stopped.set()



class AdminView:
    """What the admin server shows and may change (implements `AdminSource`), read from the App."""

    def __init__(self, app: App) -> None:
        self._app = app

    def ready(self) -> tuple[bool, str]:
        app = self._app
        if app.draining:
            return False, "draining"
        if len(app.listeners) != len(app.loaded.config.listeners):
            return False, "listeners not bound yet"
        waiting = [name for name, cluster in app.clusters.items() if not cluster.has_endpoints]
        if waiting:
            return False, f"waiting for the first endpoints of: {', '.join(sorted(waiting))}"
        return True, "ready"

    def config_dump(self) -> dict[str, Any]:
        return redacted_dump(self._app.loaded)

    def clusters(self) -> dict[str, Any]:
        return {"clusters": [cluster.snapshot() for cluster in self._app.clusters.values()]}

    async def metrics(self, accept: str | None) -> tuple[bytes, str]:
        # Breaker states move open -> half-open lazily (on the next request); read them so a scrape is current.
        for cluster in self._app.clusters.values():
            cluster.update_gauges()
        return render_metrics(self._app.registry, accept)

    def request_shutdown(self) -> None:
        self._app.request_shutdown()

    def log_level(self) -> str:
        return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()

    def set_log_level(self, level: str) -> None:
        logging.getLogger().setLevel(level.upper())


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
