"""Which discovery feeds which cluster: the running resolvers and watches, shared, started and stopped.

Owns the discovery side of the wiring: a cluster built with `discovery:` is fed by `feed` and stops being
fed by `unfeed`. DNS: one resolver per (cluster name, dns config), so a reload that rebuilds a cluster but
keeps its discovery config keeps the resolver and its last good set. Kubernetes: one API client for the
process and one watch per distinct Service (and per distinct Pod selector), shared by every cluster that
names it, old or new: a reload that keeps a cluster's discovery keeps its watch, because the new cluster
subscribes before the old one is retired. Also finds this node's zone from its Node when asked. Errors are
counted through the callbacks it is given. Must not know clusters beyond the callbacks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from proxy.clock import Clock
from proxy.config.model import DiscoveryConfig, DnsDiscoveryConfig
from proxy.discovery.dns import Addresses, DnsDiscovery, Lookup, getaddrinfo_lookup
from proxy.discovery.kube_api import KubeApi, KubeError
from proxy.discovery.kube_watch import WatchRegistry
from proxy.discovery.kubernetes import ServiceEndpoints, node_zone
from proxy.discovery.snapshot import EndpointSet

log = logging.getLogger("proxy.discovery")

Deliver = Callable[[EndpointSet | Addresses], None]
View = Callable[[], dict[str, object]]
# Reading the Node's zone: tries, and the pause between them (a Node read is one GET; the API may be
# starting up with the pod).
NODE_ZONE_TRIES: Final = 5
NODE_ZONE_PAUSE: Final = 2.0


class DiscoveryHub:
    """The running discoveries of one worker."""

    def __init__(self, clock: Clock, count_error: Callable[[str, str], None],
                 forget_errors: Callable[[str], None]) -> None:
        self._clock = clock
        self._count_error = count_error
        self._forget_errors = forget_errors
        # How DNS names are looked up (tests substitute a fake).
        self.dns_lookup: Lookup = getaddrinfo_lookup
        self.resolvers: dict[tuple[str, DnsDiscoveryConfig], DnsDiscovery] = {}
        # How the Kubernetes API is found (None: lightkube's search: in-cluster, $KUBECONFIG, ~/.kube/config).
        self.kube_config_loader: Callable[[], Any] | None = None
        self._kube: WatchRegistry | None = None
        # Tests shorten how long a watch lasts (an emulator does not end watches itself).
        self.watch_seconds: int | None = None
        self.watch_grace: float | None = None
        # Per fed owner (a Cluster object): how to stop feeding it, and the cluster name it feeds.
        self._feeds: dict[object, tuple[Callable[[], None], str]] = {}
        # Lookups and API calls wait for `open()`: the sidecar's first log line says what it bound, and only
        # then do discovery's warnings (a name that does not resolve, no kubeconfig) follow.
        self._gate = asyncio.Event()

    @property
    def kube(self) -> WatchRegistry:
        """The Kubernetes watches (and the API client), made on first use."""
        if self._kube is None:
            self._kube = WatchRegistry(KubeApi(self.kube_config_loader))
            self._kube.gate = self._gate
            if self.watch_seconds is not None:
                self._kube.watch_seconds = self.watch_seconds
            if self.watch_grace is not None:
                self._kube.watch_grace = self.watch_grace
        return self._kube

    def feed(self, owner: object, cluster: str, discovery: DiscoveryConfig, deliver: Deliver) -> View:
        """Feed `deliver` (a cluster's `set_endpoints`) from `discovery`; the view /clusters shows of it."""
        def count(kind: str) -> None:
            self._count_error(cluster, kind)

        if discovery.dns is not None:
            resolver = self._resolver(cluster, discovery.dns, count)
            resolver.subscribe(deliver)
            self._feeds[owner] = (lambda: self._unsubscribe_dns(resolver, deliver), cluster)
            return resolver.snapshot
        assert discovery.kubernetes is not None
        service = ServiceEndpoints(cluster, discovery.kubernetes, self.kube, deliver, count)
        service.start()
        self._feeds[owner] = (service.stop, cluster)
        return service.snapshot

    def open(self) -> None:
        """Let lookups and API calls begin (called once the sidecar has bound its listeners)."""
        self._gate.set()

    def unfeed(self, owner: object) -> None:
        """`owner` was retired: stop feeding it; a resolver or watch nobody else takes stops too."""
        entry = self._feeds.pop(owner, None)
        if entry is None:
            return
        stop, cluster = entry
        stop()
        if all(name != cluster for _, name in self._feeds.values()):
            self._forget_errors(cluster)

    def _resolver(self, cluster: str, dns: DnsDiscoveryConfig, count: Callable[[str], None]) -> DnsDiscovery:
        key = (cluster, dns)
        resolver = self.resolvers.get(key)
        if resolver is None:
            resolver = DnsDiscovery(cluster, dns, self._clock, count, self.dns_lookup)
            resolver.gate = self._gate
            self.resolvers[key] = resolver
            resolver.start()
        return resolver

    def _unsubscribe_dns(self, resolver: DnsDiscovery, deliver: Deliver) -> None:
        if resolver.unsubscribe(deliver):
            resolver.stop()
            self.resolvers.pop((resolver.cluster, resolver.config), None)

    async def node_zone(self, node_name: str) -> str | None:
        """This node's zone, read from its Node (None when unknown or not permitted); a few tries."""
        await self._gate.wait()
        for attempt in range(1, NODE_ZONE_TRIES + 1):
            try:
                zone = await node_zone(self.kube.api, node_name)
            except KubeError as exc:
                log.warning("reading the zone of node %s: %s (%s)", node_name, exc, exc.kind)
                if exc.kind in ("forbidden", "not_found", "unauthorized") or attempt == NODE_ZONE_TRIES:
                    log.info("zone preference stays off: set node.zone to enable it without reading the Node")
                    return None
                await self._clock.sleep(NODE_ZONE_PAUSE * attempt)
                continue
            log.info("node %s is in zone %s", node_name, zone)
            return zone
        return None

    async def close(self) -> None:
        """Stop every resolver and watch, wait for their tasks, close the API client."""
        tasks: list[asyncio.Task[None]] = [r.task for r in self.resolvers.values() if r.task is not None]
        if self._kube is not None:
            tasks.extend(self._kube.tasks())
        for stop, _ in list(self._feeds.values()):
            stop()
        self._feeds.clear()
        for resolver in list(self.resolvers.values()):
            resolver.stop()
        self.resolvers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._kube is not None:
            await self._kube.close()
