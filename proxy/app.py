"""The composition root: builds clusters, listeners, routes and the admin server from a loaded config.

Owns the lifecycle start -> ready -> drain -> stop, hot reload (the file parsed in a worker thread, only
when its hash changed; bursts of requests coalesced; everything new bound before the one-step swap, so a
reload applies whole or not at all), the refusal of keys whose feature does not exist yet ("not supported
yet: key.path"), and the admin view of the running state (`AdminSource`). Each concern compiles its own
config into runtime objects here, once. Must not parse requests or hold per-request state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import logging
import os
import random
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry

from proxy.admin.server import AdminServer, AdminSource
from proxy.clock import Clock
from proxy.config.load import ConfigError, ConfigUnreadable, LoadedConfig, parse_config, read_and_hash, redacted_dump
from proxy.config.model import Address, ClusterConfig, Config, Http2Config, ListenerConfig, host_port
from proxy.config.watch import ConfigWatcher
from proxy.discovery.hub import DiscoveryHub
from proxy.discovery.static import static_endpoints
from proxy.filters.keysfile import KeyStores
from proxy.filters.trace import TracePropagator
from proxy.http.client import ClientConnection
from proxy.http.h2_client import H2ClientConnection
from proxy.http.path import MODES as PATH_MODES
from proxy.http.server import create_protocol_factory
from proxy.http.settings import Http2Settings, ServerSettings
from proxy.outbound import build_router
from proxy.routing.table import RouteTable
from proxy.security.origination import ALPN, ClusterOrigin
from proxy.security.termination import TlsTermination, acceptor_factory
from proxy.security.tls import ServerTls, TlsError
from proxy.stages.path import RequestPath
from proxy.stages.route import Router
from proxy.telemetry.access_log import AccessLogSink
from proxy.telemetry.exposition import render_metrics
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.record import RecordSink
from proxy.telemetry.tracing import SpanSink
from proxy.upstream.cluster import Cluster
from proxy.upstream.health import HealthChecker

log = logging.getLogger("proxy.app")


def unsupported_keys(config: Config) -> list[str]:
    """Key paths the config uses whose feature is built by a later issue (refused by `run`)."""
    found: list[str] = []
    for i, listener in enumerate(config.listeners):
        found.extend(_unsupported_listener_keys(listener, f"listeners[{i}]"))
    for i, cluster in enumerate(config.clusters):
        found.extend(_unsupported_cluster_keys(cluster, f"clusters[{i}]"))
    return found


def _unsupported_listener_keys(listener: ListenerConfig, where: str) -> list[str]:
    """`unsupported_keys` of one listener (and its routes), under its key path `where`."""
    return []


def _unsupported_cluster_keys(cluster: ClusterConfig, where: str) -> list[str]:
    """`unsupported_keys` of one cluster, under its key path `where`."""
    return []


def server_settings(listener: ListenerConfig) -> ServerSettings:
    http = listener.http
    http2 = http.http2 if http.http2 is not None else Http2Config()
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
        # HTTP/2 is on for every listener (the contract: every listener serves h2c on its port); the
        # `http2:` block only changes its limits.
        http2=Http2Settings(max_concurrent_streams=http2.max_concurrent_streams,
                            initial_stream_window=http2.initial_stream_window,
                            max_resets_per_second=http2.max_resets_per_second),
    )


class BindError(Exception):
    """A reload cannot bind a socket its new config needs: `what` names it (`listener outbound
    127.0.0.1:8080`, `admin 0.0.0.0:15000`)."""

    def __init__(self, what: str, error: OSError) -> None:
        # uvloop's strerror is a sentence repeating the address; the errno's own words are enough after `what`.
        super().__init__(f"{what}: {os.strerror(error.errno) if error.errno else error}")


# After a reload's build, the loop runs this long before the cyclic collector resumes (see _collector_paused).
COLLECTOR_RESUME_DELAY: Final = 0.01


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """What a reload's worker thread makes: the config, and each listener's route table (pure, compiled
    from the config alone; the routers around them bind clusters and metrics, so those are built on the loop)."""

    loaded: LoadedConfig
    tables: dict[str, RouteTable]


def with_ports(loaded: LoadedConfig, ports: Mapping[str, int]) -> LoadedConfig:
    """The config with the listeners named in `ports` that are configured with port 0 given that port instead:
    the workers of one sidecar bind the port the first of them got, so they all share it, at start and after
    every reload (a reload that kept port 0 must not move a worker to a new random port)."""
    if not ports:
        return loaded
    config = loaded.config
    listeners = [
        listener.model_copy(update={"address": listener.address.model_copy(update={"port": ports[listener.name]})})
        if listener.name in ports and listener.address.port == 0 else listener
        for listener in config.listeners
    ]
    return dataclasses.replace(loaded, config=config.model_copy(update={"listeners": listeners}))


@dataclasses.dataclass
class _Staged:
    """What a reload builds off to the side before its one-step swap (App._apply): the clusters, listeners,
    sockets and bound addresses of the new config (running ones reused where unchanged), and the undo list
    if a later step fails: the sockets bound and clusters made for it alone."""

    clusters: dict[str, Cluster] = dataclasses.field(default_factory=dict)
    fresh_clusters: list[Cluster] = dataclasses.field(default_factory=list)
    listeners: dict[str, RequestPath] = dataclasses.field(default_factory=dict)
    servers: dict[str, asyncio.Server] = dataclasses.field(default_factory=dict)
    bound: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    new_servers: list[asyncio.Server] = dataclasses.field(default_factory=list)
    # Kept listeners (same address) and what the swap gives them.
    updates: list[tuple[RequestPath, ServerSettings, Router, TracePropagator]] = dataclasses.field(
        default_factory=list)
    new_admin: tuple[AdminServer, int] | None = None
    # Each TLS listener's termination (running ones kept where their `tls:` is unchanged), and the new ones.
    tls: dict[str, TlsTermination] = dataclasses.field(default_factory=dict)
    fresh_tls: list[TlsTermination] = dataclasses.field(default_factory=list)


def _prepare(raw: bytes, path: Path, ports: Mapping[str, int]) -> _Prepared:
    """In a reload's worker thread: parse and validate the file, then compile its route tables."""
    loaded = with_ports(parse_config(raw, path), ports)
    tables = {listener.name: RouteTable.from_config(listener.routes) for listener in loaded.config.listeners}
    return _Prepared(loaded, tables)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a reload builds its config.

    Why: parsing allocates hundreds of thousands of short-lived YAML nodes and the build tens of thousands
    of objects, which set off full collections; a collection holds the GIL until it has scanned every
    object, from whichever thread allocated, so the event loop stalled up to 200 ms at a time while a
    3000-route config was parsed in a thread. Those objects form no cycles (reference counting frees the
    temporaries), so the pause leaves no garbage behind.

    On the way out, what the reload built (a new config and its routers: long-lived) moves straight to the
    oldest generation: `freeze` then `unfreeze` splices the young generations onto it without scanning them.
    Left young, its 100k+ objects would be swept by a gen-0 and then a gen-1 collection, 30 ms of stall
    each for 3000 routes. Any cyclic garbage among them is still found by the next full collection, which
    runs when it would have anyway (the heap grew by a quarter)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if paused:
            gc.enable()


async def bind_moved_admin(source: AdminSource, address: Address, old: AdminServer | None,
                           old_port: int) -> tuple[AdminServer, int]:
    """A reload moved `admin.address`: serve `source` on the new address beside the `old` server (on
    `old_port`), which the caller stops once the reload has swapped everything in, so a failure leaves the
    old one serving. Returns the new server and its port; raises `BindError`."""
    admin = AdminServer(source, address.host, address.port)
    try:
        return admin, await admin.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or address.port == 0 or address.port != old_port or old is None:
            raise BindError(f"admin {address}", exc) from None
    # The same port on another host (127.0.0.1:15000 -> 0.0.0.0:15000): the old socket holds the port, so
    # it has to close first; if the new address still cannot be bound, the old one is bound again.
    await old.stop()
    try:
        return admin, await admin.start()
    except OSError as exc:
        error = BindError(f"admin {address}", exc)
    try:
        await old.start()
    except OSError as again:
        log.error("admin: cannot bind its old address again: %s; no admin endpoint until a reload moves it",
                  again.strerror or again)
    raise error


class App:
    """One running sidecar process: its listeners, clusters, metrics and admin server."""

    def __init__(self, loaded: LoadedConfig, clock: Clock | None = None, *, admin_unix: str | None = None,
                 reuse_port: bool = False, source: Path | None = None,
                 pinned_ports: Mapping[str, int] | None = None) -> None:
        # A worker of a multi-process sidecar: listener name -> the port its port-0 listener shares with
        # the other workers (see with_ports).
        self.pinned_ports: Mapping[str, int] = dict(pinned_ports or {})
        loaded = with_ports(loaded, self.pinned_ports)
        self.loaded = loaded
        # Where a reload reads the config's bytes, when not from the config file itself: a supervised
        # worker's supervisor keeps a snapshot of the config it approved (runtime.py).
        self.source = source
        # Workers of one sidecar share each listener's port (SO_REUSEPORT): the kernel spreads connections.
        self.reuse_port = reuse_port
        # A worker of a multi-process sidecar serves its admin view on this unix socket (the supervisor
        # owns `admin.address` and gathers from every worker); None = serve `admin.address` itself.
        self.admin_unix = admin_unix
        self.clock = clock or Clock()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.clusters: dict[str, Cluster] = {}
        # The API keys files routes name, each read once and watched while a route names it.
        self.key_stores = KeyStores()
        self.listeners: dict[str, RequestPath] = {}
        # TLS listeners' terminations by listener name; each listener socket's protocol factory reads it per
        # connection, so a reload can change a listener's TLS without rebinding it.
        self.tls: dict[str, TlsTermination] = {}
        self._tls_watches: dict[TlsTermination, asyncio.Task[None]] = {}
        # How often TLS files are looked at for a rotation (tests shorten it).
        self.tls_poll_interval = 1.0
        self.servers: dict[str, asyncio.Server] = {}
        self.bound: dict[str, tuple[str, int]] = {}
        self.admin: AdminServer | None = None
        self.draining = False
        self.stopped = asyncio.Event()
        self._shutdown_requested = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # A cluster's background tasks (outlier timer, TLS file watch), keyed by the Cluster object: a
        # reload builds the replacement before retiring the old one.
        self._cluster_tasks: dict[Cluster, list[asyncio.Task[Any]]] = {}
        # DNS and Kubernetes discovery: resolvers and watches shared by the clusters they feed (tests set
        # its DNS lookup and Kubernetes config loader before `start`).
        metrics = self.metrics
        self.discovery = DiscoveryHub(self.clock, lambda cluster, kind: metrics.discovery_errors(cluster, kind).inc(),
                                      metrics.forget_discovery)
        # This node's name (the downward API's spec.nodeName, passed in by the runtime) and zone: `node.zone`,
        # else read from the Node once a Kubernetes cluster exists. Clusters prefer endpoints of this zone.
        self.node_name: str | None = None
        self.local_zone: str | None = loaded.config.node.zone
        self._zone_task: asyncio.Task[None] | None = None
        # Span export (`tracing.otlp`): the sink every listener hands sampled requests to, None without it.
        self.span_sink: SpanSink | None = None
        self._reload_lock = asyncio.Lock()
        # Coalescing: the one task that reloads while requests keep arriving, and whether one arrived.
        self._reloader: asyncio.Task[None] | None = None
        self._reload_wanted = False
        # The content hash of the last file a reload refused, so one bad edit is refused (and counted) once.
        self._refused_hash: str | None = None
        # Listeners replaced by a reload (address change, removal) whose connections are still finishing.
        self._draining_listeners: set[RequestPath] = set()
        self._reloads_succeeded = self.metrics.config_reloads("success")
        # The access log's sink, in every listener's sinks while `access_log:` is configured (None: off).
        self.access_log: AccessLogSink | None = None
        self._reloads_failed = self.metrics.config_reloads("failure")

    # -- building ----------------------------------------------------------------------------------

    def _make_cluster(self, config: ClusterConfig) -> Cluster:
        # HTTP/1.1 upstreams, or HTTP/2 ones (`protocol: http2`: multiplexed connections). A cluster with `tls:`
        # loads its files here (TlsError when they cannot make a context) and watches them.
        alpn = {"http2": ("h2",), "auto": ("h2", "http/1.1")}.get(config.protocol, ALPN)
        origin = (ClusterOrigin.from_config(config.name, config.tls, self.metrics, alpn)
                  if config.tls is not None else None)
        # `auto` without TLS is HTTP/1.1; over TLS, ALPN chooses per connection.
        http2 = config.protocol == "http2" or (config.protocol == "auto" and config.tls is not None)
        multiplexed = H2ClientConnection if http2 else None
        cluster = Cluster(config, self.metrics, self.clock, ClientConnection, origin, multiplexed)
        cluster.local_zone = self.local_zone
        if config.endpoints is not None:
            cluster.set_endpoints(static_endpoints(config.endpoints))
        elif config.discovery is not None:
            cluster.discovery_view = self.discovery.feed(cluster, cluster.name, config.discovery,
                                                         cluster.set_endpoints)
            if config.discovery.kubernetes is not None:
                self._find_zone()
        tasks: list[asyncio.Task[Any]] = []
        if cluster.outlier is not None:
            tasks.append(asyncio.create_task(self._outlier_timer(cluster), name=f"outlier {cluster.name}"))
        if origin is not None:
            tasks.append(asyncio.create_task(origin.material.watch(self.tls_poll_interval),
                                             name=f"tls watch cluster {cluster.name}"))
        if config.health_check is not None:
            checker = HealthChecker(cluster, config.health_check, self.clock)
            cluster.health_view = checker.snapshot
            tasks.append(asyncio.create_task(checker.run(), name=f"health check cluster {cluster.name}"))
        if tasks:
            self._tasks.update(tasks)
            self._cluster_tasks[cluster] = tasks
        return cluster

    def _find_zone(self) -> None:
        """Without `node.zone`, read this node's zone from its Node (once, in the background), then hand it to
        every cluster."""
        if self.local_zone is not None or self.node_name is None or self._zone_task is not None:
            return

        async def find(node_name: str) -> None:
            zone = await self.discovery.node_zone(node_name)
            if zone is not None and self.loaded.config.node.zone is None:
                self.local_zone = zone
                for cluster in self.clusters.values():
                    cluster.local_zone = zone
                    cluster.rebalance()

        self._zone_task = asyncio.create_task(find(self.node_name), name="node zone")
        self._tasks.add(self._zone_task)

    def _set_telemetry(self, config: Config, old: Config | None = None) -> None:
        """Make the span sink `config` asks for (`tracing.otlp`) and give every listener its sinks. A reload
        that keeps the tracing config and the node keeps the span sink; a changed one replaces it (the old
        flushes in a thread)."""
        if old is None or old.tracing.otlp != config.tracing.otlp or old.node != config.node:
            retired, self.span_sink = self.span_sink, None
            if config.tracing.otlp is not None:
                metrics = self.metrics
                self.span_sink = SpanSink.otlp(config.tracing.otlp.endpoint, config.node.service,
                                               config.node.namespace, self.clock, metrics.trace_spans_dropped.inc)
            if retired is not None:
                self._tasks.add(asyncio.create_task(asyncio.to_thread(retired.close), name="span sink close"))
        for listener in {*self.listeners.values(), *self._draining_listeners}:
            self._attach_sinks(listener)

    def _set_zone(self, zone: str | None) -> None:
        """A reload changed `node.zone`: every cluster prefers the new zone (unset: the Node's, read again)."""
        self.local_zone = zone
        for cluster in self.clusters.values():
            cluster.local_zone = zone
            cluster.rebalance()
        if zone is None and self._zone_task is not None and self._zone_task.done():
            self._zone_task = None
        if any(c.config.discovery is not None and c.config.discovery.kubernetes is not None
               for c in self.clusters.values()):
            self._find_zone()

    def _retire_cluster(self, cluster: Cluster) -> None:
        """A cluster removed or replaced by a reload: idle connections close now, busy ones when done."""
        for task in self._cluster_tasks.pop(cluster, ()):
            task.cancel()
            self._tasks.discard(task)
        self.discovery.unfeed(cluster)
        cluster.close()
        if cluster.tls is not None:
            self._settle_cert_expiry(cluster.name)

    def _settle_cert_expiry(self, name: str) -> None:
        """After a cluster with `tls:` was retired: its `sidecar_cert_expiry_timestamp_seconds` series shows the
        certificate of the cluster of that name in force, or leaves /metrics when there is none."""
        running = self.clusters.get(name)
        origin = running.tls if running is not None else None
        not_after = origin.material.not_after if isinstance(origin, ClusterOrigin) else None
        if not_after is not None:
            self.metrics.cert_expiry_of(name).set(not_after)
        elif name not in self.tls:  # the label names listeners too: a TLS listener of that name keeps its series
            with contextlib.suppress(KeyError):
                self.metrics.cert_expiry.remove(name)

    def _make_trace(self, config: Config) -> TracePropagator:
        return TracePropagator.from_config(list(config.tracing.propagation), config.tracing.sampling,
                                           random.Random(self.clock.random.random()))

    def _make_router(self, listener_config: ListenerConfig, clusters: dict[str, Cluster],
                     table: RouteTable | None = None) -> Router:
        if table is None:
            table = RouteTable.from_config(listener_config.routes)
        return build_router(listener_config.name, table, clusters, self.metrics, self.clock, self.key_stores)

    def _make_tls(self, listener_config: ListenerConfig) -> TlsTermination | None:
        """A TLS listener's termination, its files loaded and watched for rotation; raises TlsError."""
        tls = listener_config.tls
        if tls is None:
            return None
        name = listener_config.name
        material = ServerTls(name, tls.cert, tls.key, tls.ca, tls.require_client_cert, self.metrics)
        termination = TlsTermination(name, material, self.metrics)
        task = asyncio.create_task(material.watch(self.tls_poll_interval), name=f"tls watch {name}")
        self._tasks.add(task)
        self._tls_watches[termination] = task
        return termination

    def _retire_tls(self, termination: TlsTermination, *, close: bool) -> None:
        """A termination no longer in force: its watch stops; with `close`, its handshakes under way too."""
        task = self._tls_watches.pop(termination, None)
        if task is not None:
            task.cancel()
            self._tasks.discard(task)
        if close:
            termination.close()

    async def _bind(self, listener: RequestPath, address: Address) -> tuple[asyncio.Server, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        name = listener.name
        # Per connection: straight to the HTTP codec, or through the listener's TLS handshake first.
        factory = acceptor_factory(lambda: self.tls.get(name), create_protocol_factory(listener),
                                   lambda: listener.settings.header_read_timeout)
        server = await loop.create_server(
            factory, address.host, address.port,
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
        self.access_log = self._make_access_log(config)
        for listener_config in config.listeners:
            termination = self._make_tls(listener_config)
            if termination is not None:
                self.tls[listener_config.name] = termination
            router = self._make_router(listener_config, self.clusters)
            listener = RequestPath(listener_config.name, server_settings(listener_config), router, trace,
                                        self.metrics, self.clock)
            self._attach_sinks(listener)
            server, bound = await self._bind(listener, listener_config.address)
            self.listeners[listener_config.name] = listener
            self.servers[listener_config.name] = server
            self.bound[listener_config.name] = bound
        self._watch_keys()
        self._set_telemetry(config)
        await self._start_admin(config)
        # Everything is bound (what the first log line will say): discovery's lookups and API calls may begin.
        self.discovery.open()

    def _make_access_log(self, config: Config) -> AccessLogSink | None:
        """The access log's sink for `config` (None when `access_log:` is absent: requests pay nothing).
        Opens the file: OSError when it cannot."""
        settings = config.access_log
        if settings is None:
            return None
        return AccessLogSink(settings.path, settings.format, settings.success_sample,
                             self.metrics.access_log_lines_dropped)

    def _attach_sinks(self, listener: RequestPath) -> None:
        """Give `listener` the running telemetry sinks besides metrics (the access log, spans), or none."""
        sinks: tuple[RecordSink, ...] = tuple(sink for sink in (self.access_log, self.span_sink) if sink is not None)
        listener.set_sinks(sinks, self.span_sink is not None)

    def _swap_access_log(self, sink: AccessLogSink | None, old_listeners: dict[str, RequestPath]) -> None:
        """After a reload's swap: every listener (draining ones too) writes to `sink`; a replaced sink writes
        what it has queued and closes in the background."""
        old, self.access_log = self.access_log, sink
        # Every listener, even with the sink unchanged: a listener the reload added or moved is a new one.
        for listener in {*old_listeners.values(), *self.listeners.values(), *self._draining_listeners}:
            self._attach_sinks(listener)
        if old is not None and old is not sink:
            task = asyncio.create_task(old.aclose(), name="close replaced access log")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def reopen_access_log(self) -> None:
        """SIGUSR1: reopen the access log file (logrotate renamed it)."""
        if self.access_log is not None:
            self.access_log.reopen()

    def _watch_keys(self) -> None:
        """Re-read the API keys files when they change on disk (each worker process watches its own)."""
        task = asyncio.create_task(self.key_stores.watch(), name="api keys watch")
        self._tasks.add(task)

    async def _start_admin(self, config: Config) -> None:
        if self.admin_unix is not None:
            self.admin = AdminServer(AdminView(self), "", 0, unix_path=self.admin_unix)
            await self.admin.start()
        else:
            admin_address = config.admin.address
            self.admin = AdminServer(AdminView(self), admin_address.host, admin_address.port)
            admin_port = await self.admin.start()
            self.bound["admin"] = (admin_address.host, admin_port)

    async def _bind_moved_admin(self, address: Address) -> tuple[AdminServer, int]:
        return await bind_moved_admin(AdminView(self), address, self.admin, self.bound.get("admin", ("", 0))[1])

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
        """SIGHUP or a changed file: reload in the background. Requests that arrive while a reload runs
        collapse into one follow-up, so a burst of signals costs at most two reloads, not one each."""
        self._reload_wanted = True
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.create_task(self._reload_while_wanted(), name="config reload")
            self._tasks.add(self._reloader)
            self._reloader.add_done_callback(self._tasks.discard)

    async def _reload_while_wanted(self) -> None:
        # The follow-up matters: the file may have changed again after the running reload read it.
        while self._reload_wanted and not self.draining:
            self._reload_wanted = False
            await self.reload()

    async def reload(self) -> bool:
        """Load, validate, diff, build what changed, swap in one step. An invalid file, or one whose new
        sockets cannot be bound, changes nothing. True when the file's config is (now) the one in force.

        Reading, hashing, parsing and validating run in a worker thread: a large config takes a second of
        CPU, and on the event loop that second would stall every request. The thread holds the GIL only in
        slices (the interpreter switches threads every 5 ms), so requests keep flowing meanwhile."""
        async with self._reload_lock:
            if self.draining:
                return False
            path = self.loaded.path
            try:
                raw, digest = await asyncio.to_thread(read_and_hash, self.source or path)
            except ConfigUnreadable as error:  # mid-replacement, or removed: nothing to remember it by
                log.error("reload refused: %s; the running config (version %s) stays", error.problems[0],
                          self.loaded.version_hash[:12])
                self._reloads_failed.inc()
                return False
            # Compare hashes before parsing anything: an unchanged file (a SIGHUP with nothing edited) or
            # the file already refused (SIGHUP and the file watch both report one edit) costs one read.
            if digest == self.loaded.version_hash:
                self._refused_hash = None  # reverted: the refused file, if written again, is a new edit
                log.info("reload: %s unchanged (version %s)", path, digest[:12])
                return True
            if digest == self._refused_hash:
                # Info, not debug: an operator who freed a port and sent SIGHUP must learn why nothing happened.
                log.info("reload: %s is the content already refused; not tried again until the file changes",
                         path)
                return False
            with _collector_paused():
                applied = await self._reload_from(raw, digest, path)
                # Requests that waited while the new routers were built finish (a request takes a few
                # loop iterations) before the deferred collection runs, rather than waiting for both.
                await asyncio.sleep(COLLECTOR_RESUME_DELAY)
            return applied

    async def _reload_from(self, raw: bytes, digest: str, path: Path) -> bool:
        """The part of a reload past the hash check: parse and compile in a worker thread, then apply."""
        try:
            prepared = await asyncio.to_thread(_prepare, raw, path, self.pinned_ports)
        except ConfigError as error:
            for problem in error.problems:
                log.error("reload refused: %s", problem)
            self._refuse(digest, f"{path}: {len(error.problems)} problem(s)")
            return False
        except Exception:  # a bug compiling what validated: refused, never half-applied
            log.exception("reload: compiling the routes of %s failed", path)
            self._refuse(digest, "cannot build it (the error is above)")
            return False
        loaded = prepared.loaded
        missing = unsupported_keys(loaded.config)
        if missing:
            for key in missing:
                log.error("reload refused: %s: not supported yet: %s", path, key)
            self._refuse(digest, f"{path}: {len(missing)} key(s) name features that do not exist yet")
            return False
        try:
            await self._apply(loaded, prepared.tables)
        except BindError as exc:
            self._refuse(digest, f"cannot bind {exc}")
            return False
        except TlsError as exc:  # a listener's or changed cluster's cert, key or CA files cannot be loaded
            self._refuse(digest, str(exc))
            return False
        except OSError as exc:  # the access log's file cannot be opened
            self._refuse(digest, exc.strerror or str(exc))
            return False
        except Exception:  # a bug building the new objects: _apply undid what it built, so refuse it
            log.exception("reload: building the config of %s failed", path)
            self._refuse(digest, "cannot build it (the error is above)")
            return False
        self._refused_hash = None
        self._reloads_succeeded.inc()
        log.info("reloaded %s: version %s", path, loaded.version_hash[:12])
        return True

    def _refuse(self, digest: str, why: str) -> None:
        """Count a refused reload once per file content: the same bytes reported again (by SIGHUP and the
        file watch, or a burst of signals) are not tried, logged or counted again until the file changes."""
        log.error("reload refused: %s; the running config (version %s) stays", why, self.loaded.version_hash[:12])
        self._reloads_failed.inc()
        self._refused_hash = digest

    async def _apply(self, loaded: LoadedConfig, tables: dict[str, RouteTable] | None = None) -> None:
        config = loaded.config
        # 1. Build everything new off to the side; nothing running changes until the swap, and whatever
        # fails here (a port taken) undoes what was built, so a reload applies whole or not at all.
        staged = _Staged()
        # The access log first (it opens its file): unchanged settings keep the running sink.
        access_log = self.access_log
        if config.access_log != self.loaded.config.access_log:
            access_log = self._make_access_log(config)
        try:
            await self._stage(config, tables or {}, staged)
        except BaseException:
            self._unstage(staged)
            if access_log is not None and access_log is not self.access_log:
                access_log.close(1.0)
            raise
        # 2. The swap, in one step (no await until it is done).
        old_listeners, old_servers, old_clusters = self.listeners, self.servers, self.clusters
        old_config = self.loaded.config
        old_zone = old_config.node.zone
        self._swap(loaded, staged)
        self._set_telemetry(config, old_config)
        self._swap_access_log(access_log, old_listeners)
        if config.node.zone != old_zone:
            self._set_zone(config.node.zone)
        # 3. Drain what the new config no longer uses: old listeners stop accepting and let their
        # connections finish; old clusters close idle connections (in-flight requests keep theirs).
        self._drain_retired(old_listeners, old_servers, old_clusters)
        if staged.new_admin is not None:
            await self._finish_admin_move(config.admin.address.host, staged.new_admin)

    async def _stage(self, config: Config, tables: dict[str, RouteTable], staged: _Staged) -> None:
        """Step 1 of `_apply`: fill `staged` with the clusters, listeners and sockets `config` needs, reusing
        what has not changed. Raises `BindError` (or a bug's exception) with `staged` holding what it built."""
        old_config = self.loaded.config
        for cluster_config in config.clusters:
            current = self.clusters.get(cluster_config.name)
            if current is not None and current.config == cluster_config:
                staged.clusters[cluster_config.name] = current  # unchanged: keeps its pools, breakers, counters
            else:
                cluster = self._make_cluster(cluster_config)
                staged.clusters[cluster_config.name] = cluster
                staged.fresh_clusters.append(cluster)
        trace = self._make_trace(config)
        old_by_name = {listener.name: listener for listener in old_config.listeners}
        for listener_config in config.listeners:
            await self._stage_listener(listener_config, old_by_name.get(listener_config.name),
                                       tables.get(listener_config.name), trace, staged)
        # The admin server last: nothing after it can fail, so a moved admin never needs undoing.
        if config.admin.address != old_config.admin.address and self.admin_unix is None:
            staged.new_admin = await self._bind_moved_admin(config.admin.address)

    async def _stage_listener(self, listener_config: ListenerConfig, previous: ListenerConfig | None,
                              table: RouteTable | None, trace: TracePropagator, staged: _Staged) -> None:
        """One listener of `_stage`: the running one, to be updated at the swap, when its address is the
        one it had (`previous` is its old config); otherwise a new one, bound now."""
        name = listener_config.name
        running_tls = self.tls.get(name)
        if running_tls is not None and previous is not None and previous.tls == listener_config.tls:
            staged.tls[name] = running_tls  # the same files: the running material (and its watch) stays
        else:
            termination = self._make_tls(listener_config)
            if termination is not None:
                staged.tls[name] = termination
                staged.fresh_tls.append(termination)
        router = self._make_router(listener_config, staged.clusters, table)
        settings = server_settings(listener_config)
        kept = self.listeners.get(name)
        if kept is not None and previous is not None and previous.address == listener_config.address:
            # Same address: keep the socket and its connections; the swap updates it.
            staged.listeners[name] = kept
            staged.servers[name] = self.servers[name]
            staged.bound[name] = self.bound[name]
            staged.updates.append((kept, settings, router, trace))
            return
        listener = RequestPath(name, settings, router, trace, self.metrics, self.clock)
        try:
            server, where = await self._bind(listener, listener_config.address)
        except OSError as exc:
            raise BindError(f"listener {name} {listener_config.address}", exc) from None
        staged.new_servers.append(server)
        staged.listeners[name] = listener
        staged.servers[name] = server
        staged.bound[name] = where

    def _unstage(self, staged: _Staged) -> None:
        """A failed `_stage`: close the sockets it bound and retire the clusters it made."""
        for server in staged.new_servers:
            server.close()
        for cluster in staged.fresh_clusters:
            self._retire_cluster(cluster)
        for termination in staged.fresh_tls:
            self._retire_tls(termination, close=True)

    def _swap(self, loaded: LoadedConfig, staged: _Staged) -> None:
        """Step 2 of `_apply`: each kept listener takes its new routes and settings from its next request on,
        and the staged listeners, sockets and clusters become the running ones."""
        for listener, settings, router, trace_propagator in staged.updates:
            listener.update(settings, router, trace_propagator)
        self.listeners, self.servers, self.clusters = staged.listeners, staged.servers, staged.clusters
        old_tls, self.tls = self.tls, staged.tls
        for name, termination in old_tls.items():
            if staged.tls.get(name) is not termination:
                # Replaced or removed: handshakes under way finish on it, new ones use the new config.
                self._retire_tls(termination, close=name not in staged.listeners)
        self.bound = {**staged.bound, **({"admin": self.bound["admin"]} if "admin" in self.bound else {})}
        self.loaded = loaded
        self.key_stores.retain({route.api_key.keys_file for listener in loaded.config.listeners
                                for route in listener.routes if route.api_key is not None})

    def _drain_retired(self, old_listeners: dict[str, RequestPath], old_servers: dict[str, asyncio.Server],
                       old_clusters: dict[str, Cluster]) -> None:
        """Step 3 of `_apply`: drain the listeners, sockets and clusters of before the swap that the running
        config no longer holds (the same name may hold a new object: then the old one is retired)."""
        for name, server in old_servers.items():
            if self.servers.get(name) is not server:
                server.close()
        self._draining_listeners = {old for old in self._draining_listeners if old.connections}
        for name, listener in old_listeners.items():
            if self.listeners.get(name) is not listener:
                log.info("listener %s: draining its old address", name)
                listener.drain()
                self._draining_listeners.add(listener)
        for name, cluster in old_clusters.items():
            if self.clusters.get(name) is not cluster:
                self._retire_cluster(cluster)

    async def _finish_admin_move(self, host: str, new_admin: tuple[AdminServer, int]) -> None:
        """After the swap: the admin server bound on the new `admin.address` replaces the old one."""
        old_admin, (self.admin, admin_port) = self.admin, new_admin
        self.bound["admin"] = (host, admin_port)
        log.info("admin moved to %s", host_port(host, admin_port))
        if old_admin is not None:
            await old_admin.stop()

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
        for termination in self.tls.values():
            termination.close()
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
        await self.discovery.close()
        for cluster in self.clusters.values():
            cluster.close()
        if self.admin is not None:
            await self.admin.stop()
        await self._close_telemetry()
        self.stopped.set()

    async def _close_telemetry(self) -> None:
        """Last: every request that ended (drained, or reset by the aborts) has its line and spans queued;
        they are written and exported now (spans within the sink's close deadline)."""
        if self.span_sink is not None:
            await asyncio.to_thread(self.span_sink.close)
        if self.access_log is not None:
            await self.access_log.aclose()


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
