"""The composition root: builds clusters, listeners, routes and the admin server from a loaded config.

Owns the lifecycle start -> ready -> drain -> stop, the refusal of keys whose feature does not exist
yet ("not supported yet: key.path"), and the admin view of the running state (`AdminSource`). Each
concern compiles its own config into runtime objects here, once. Must not parse requests or hold
per-request state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
from typing import Any

from prometheus_client import CollectorRegistry

from proxy.admin.server import AdminServer
from proxy.clock import Clock
from proxy.config.load import ConfigError, LoadedConfig, load_config, redacted_dump
from proxy.config.model import Address, Config, Listener, host_port
from proxy.config.model import Cluster as ClusterConfig
from proxy.config.watch import ConfigWatcher
from proxy.discovery.static import static_endpoints
from proxy.filters.trace import TracePropagator
from proxy.http.path import MODES as PATH_MODES
from proxy.http.server import ServerSettings, create_protocol_factory
from proxy.outbound import OutboundListener, Router, build_router
from proxy.routing.table import RouteTable
from proxy.telemetry.exposition import render_metrics
from proxy.telemetry.metrics import Metrics
from proxy.upstream.cluster import Cluster

log = logging.getLogger("proxy.app")


def unsupported_keys(config: Config) -> list[str]:
    """Key paths the config uses whose feature is built by a later issue (refused by `run`)."""
    found: list[str] = []
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
        stream_idle_timeout=http.stream_idle_timeout,
        max_request_body=http.max_request_body,
        max_requests_in_flight=http.max_requests_in_flight,
        scheme=b"https" if listener.tls is not None else b"http",
        path_normalization=PATH_MODES[http.path_normalization],
    )


class App:
    """One running sidecar process: its listeners, clusters, metrics and admin server."""

    def __init__(self, loaded: LoadedConfig, clock: Clock | None = None, *, admin_unix: str | None = None,
                 reuse_port: bool = False) -> None:
        self.loaded = loaded
        # Workers of one sidecar share each listener's port (SO_REUSEPORT): the kernel spreads connections.
        self.reuse_port = reuse_port
        # A worker of a multi-process sidecar serves its admin view on this unix socket (the supervisor
        # owns `admin.address` and gathers from every worker); None = serve `admin.address` itself.
        self.admin_unix = admin_unix
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
        self._tasks: set[asyncio.Task[Any]] = set()
        # Keyed by the Cluster object: a reload builds the replacement before retiring the old one.
        self._outlier_tasks: dict[Cluster, asyncio.Task[Any]] = {}
        self._reload_lock = asyncio.Lock()
        # The content hash of the last file a reload refused, so one bad edit is refused (and counted) once.
        self._refused_hash: str | None = None
        # Listeners replaced by a reload (address change, removal) whose connections are still finishing.
        self._draining_listeners: set[OutboundListener] = set()
        self._reloads_succeeded = self.metrics.config_reloads("success")
        self._reloads_failed = self.metrics.config_reloads("failure")

    # -- building ----------------------------------------------------------------------------------

    def _make_cluster(self, config: ClusterConfig) -> Cluster:
        cluster = Cluster(config, self.metrics, self.clock)
        if config.endpoints is not None:
            cluster.set_endpoints(static_endpoints(config.endpoints))
        if cluster.outlier is not None:
            task = asyncio.create_task(self._outlier_timer(cluster), name=f"outlier {cluster.name}")
            self._tasks.add(task)
            self._outlier_tasks[cluster] = task
        return cluster

    def _retire_cluster(self, cluster: Cluster) -> None:
        """A cluster removed or replaced by a reload: idle connections close now, busy ones when done."""
        task = self._outlier_tasks.pop(cluster, None)
        if task is not None:
            task.cancel()
            self._tasks.discard(task)
        cluster.close()

    def _make_trace(self, config: Config) -> TracePropagator:
        return TracePropagator.from_config(list(config.tracing.propagation), config.tracing.sampling,
                                           random.Random(self.clock.random.random()))

    def _make_router(self, listener_config: Listener, clusters: dict[str, Cluster]) -> Router:
        table = RouteTable.from_config(listener_config.routes)
        return build_router(listener_config.name, table, clusters, self.metrics, self.clock)

    async def _bind(self, listener: OutboundListener, address: Address) -> tuple[asyncio.Server, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            create_protocol_factory(listener), address.host, address.port,
            reuse_address=True, reuse_port=self.reuse_port or None, backlog=1024)
        sock = server.sockets[0]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bound = sock.getsockname()
        return server, (str(bound[0]), int(bound[1]))

    async def start(self) -> None:
        """Bind every listener and the admin server; ready once all are bound and clusters known."""
        config = self.loaded.config
        for cluster_config in config.clusters:
            self.clusters[cluster_config.name] = self._make_cluster(cluster_config)
        trace = self._make_trace(config)
        for listener_config in config.listeners:
            router = self._make_router(listener_config, self.clusters)
            listener = OutboundListener(listener_config.name, server_settings(listener_config), router, trace,
                                        self.metrics, self.clock)
            server, bound = await self._bind(listener, listener_config.address)
            self.listeners[listener_config.name] = listener
            self.servers[listener_config.name] = server
            self.bound[listener_config.name] = bound
        await self._start_admin(config)

    async def _start_admin(self, config: Config) -> None:
        if self.admin_unix is not None:
            self.admin = AdminServer(AdminView(self), "", 0, unix_path=self.admin_unix)
            await self.admin.start()
        else:
            admin_address = config.admin.address
            self.admin = AdminServer(AdminView(self), admin_address.host, admin_address.port)
            admin_port = await self.admin.start()
            self.bound["admin"] = (admin_address.host, admin_port)

    def describe_bound(self) -> str:
        parts = [f"{name}={host_port(host, port)}" for name, (host, port) in self.bound.items() if name != "admin"]
        if "admin" not in self.bound:
            return f"listening: {' '.join(parts) or '(no listeners)'}; admin on {self.admin_unix}"
        host, port = self.bound["admin"]
        return f"listening: {' '.join(parts) or '(no listeners)'}; admin {host_port(host, port)}"

    # -- hot reload --------------------------------------------------------------------------------

    def watch_config(self) -> None:
        """Reload when the config file changes on disk (noticed within 2 s)."""
        watcher = ConfigWatcher(self.loaded.path, self.request_reload)
        task = asyncio.create_task(watcher.run(), name="config watch")
        self._tasks.add(task)

    def request_reload(self) -> None:
        """SIGHUP or a changed file: reload in the background (one at a time, in order)."""
        task = asyncio.create_task(self.reload(), name="config reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Load, validate, diff, build what changed, swap in one step. An invalid file changes nothing."""
        async with self._reload_lock:
            if self.draining:
                return False
            path = self.loaded.path
            try:
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                content = None
            if content is not None and content == self._refused_hash:
                # SIGHUP and the file watch both report one edit: refuse (and count) a bad file once.
                log.debug("reload: %s is the file already refused; nothing to do", path)
                return False
            try:
                loaded = load_config(path)
            except ConfigError as error:
                for problem in error.problems:
                    log.error("reload refused: %s", problem)
                log.error("reload refused: %s: %d problem(s); the running config (version %s) stays",
                          path, len(error.problems), self.loaded.version_hash[:12])
                self._reloads_failed.inc()
                self._refused_hash = content
                return False
            if loaded.version_hash == self.loaded.version_hash:
                log.info("reload: %s unchanged (version %s)", path, loaded.version_hash[:12])
                return True
            missing = unsupported_keys(loaded.config)
            if missing:
                for key in missing:
                    log.error("reload refused: %s: not supported yet: %s", path, key)
                self._reloads_failed.inc()
                self._refused_hash = loaded.version_hash
                return False
            try:
                await self._apply(loaded)
            except OSError as exc:
                log.error("reload refused: cannot bind: %s; the running config stays", exc.strerror or exc)
                self._reloads_failed.inc()
                return False
            self._reloads_succeeded.inc()
            log.info("reloaded %s: version %s", path, loaded.version_hash[:12])
            return True

    async def _apply(self, loaded: LoadedConfig) -> None:
        config = loaded.config
        old_config = self.loaded.config
        # 1. Build everything new off to the side; nothing running changes until the swap.
        clusters: dict[str, Cluster] = {}
        fresh_clusters: list[Cluster] = []
        for cluster_config in config.clusters:
            current = self.clusters.get(cluster_config.name)
            if current is not None and current.config == cluster_config:
                clusters[cluster_config.name] = current  # unchanged: keeps its pools, breakers, counters
            else:
                cluster = self._make_cluster(cluster_config)
                clusters[cluster_config.name] = cluster
                fresh_clusters.append(cluster)
        trace = self._make_trace(config)
        listeners: dict[str, OutboundListener] = {}
        servers: dict[str, asyncio.Server] = {}
        bound: dict[str, tuple[str, int]] = {}
        new_servers: list[asyncio.Server] = []
        updates: list[tuple[OutboundListener, ServerSettings, Router, TracePropagator]] = []
        old_by_name = {listener.name: listener for listener in old_config.listeners}
        try:
            for listener_config in config.listeners:
                router = self._make_router(listener_config, clusters)
                settings = server_settings(listener_config)
                previous = old_by_name.get(listener_config.name)
                kept = self.listeners.get(listener_config.name)
                if kept is not None and previous is not None and previous.address == listener_config.address:
                    # Same address: keep the socket and its connections; the swap below updates it.
                    listeners[listener_config.name] = kept
                    servers[listener_config.name] = self.servers[listener_config.name]
                    bound[listener_config.name] = self.bound[listener_config.name]
                    updates.append((kept, settings, router, trace))
                    continue
                listener = OutboundListener(listener_config.name, settings, router, trace, self.metrics, self.clock)
                server, where = await self._bind(listener, listener_config.address)
                new_servers.append(server)
                listeners[listener_config.name] = listener
                servers[listener_config.name] = server
                bound[listener_config.name] = where
        except BaseException:
            for server in new_servers:
                server.close()
            for cluster in fresh_clusters:
                self._retire_cluster(cluster)
            raise
        # 2. The swap: each kept listener takes its new routes and settings from its next request on.
        for listener, settings, router, trace_propagator in updates:
            listener.settings = settings
            listener.router = router
            listener.trace = trace_propagator
        retired_listeners = [(name, listener) for name, listener in self.listeners.items()
                             if listeners.get(name) is not listener]
        retired_clusters = [cluster for name, cluster in self.clusters.items() if clusters.get(name) is not cluster]
        retired_servers = [server for name, server in self.servers.items() if servers.get(name) is not server]
        self.listeners, self.servers, self.clusters = listeners, servers, clusters
        self.bound = {**bound, **({"admin": self.bound["admin"]} if "admin" in self.bound else {})}
        self.loaded = loaded
        # 3. Drain what the new config no longer uses: old listeners stop accepting and let their
        # connections finish; old clusters close idle connections (in-flight requests keep theirs).
        for server in retired_servers:
            server.close()
        self._draining_listeners = {old for old in self._draining_listeners if old.connections}
        for name, listener in retired_listeners:
            log.info("listener %s: draining its old address", name)
            listener.drain()
            self._draining_listeners.add(listener)
        for cluster in retired_clusters:
            self._retire_cluster(cluster)
        if config.admin.address != old_config.admin.address and self.admin_unix is None and self.admin is not None:
            await self.admin.stop()
            await self._start_admin(config)

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
        """After `drain_delay` (still accepting, /ready already 503), stop accepting, close idle keep-alive
        connections, send `Connection: close` on busy ones, finish in-flight requests up to
        `drain_timeout`, then stop."""
        self.draining = True
        config = self.loaded.config
        if config.drain_delay > 0:
            # Endpoint removal takes a moment to reach every caller: keep serving meanwhile.
            await asyncio.sleep(config.drain_delay)
        for server in self.servers.values():
            server.close()
        every = [*self.listeners.values(), *self._draining_listeners]
        for listener in every:
            listener.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.drain_timeout
        while loop.time() < deadline and any(listener.connections for listener in every):
            await asyncio.sleep(0.05)
        for listener in every:
            for conn in list(listener.connections):
                conn.abort()
        tasks = list(self._tasks)
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
