"""Kubernetes discovery: a cluster's endpoints from its Service's EndpointSlices (and Pods, for subsets).

Owns turning watched objects into the cluster's endpoint-set snapshot (`DiscoveredEndpoint`s):
- EndpointSlices of the Service (label `kubernetes.io/service-name`), the port chosen by name or number
  (a number is the endpoints' port as the slice lists it, i.e. the Pod's target port; a name follows the
  Service's port mapping, which is what Kubernetes names slice ports by);
- conditions as the EndpointSlice API defines them: `ready` (unset means ready) takes new requests;
  `serving` and `terminating` stays in the set as terminating (no new requests; in-flight ones finish,
  as on its way out it still serves); anything else is left out;
- the endpoint's `zone` and topology hints (`hints.forZones`), which the cluster's zone preference reads;
- with `labels:`, only endpoints whose `targetRef` Pod carries those labels (a second, shared watch of
  the namespace's Pods by that selector): one Service split into subsets, as Istio's DestinationRule does.
The watches themselves are `kube_watch.ResourceWatch`es from the shared `WatchRegistry` (one per distinct
Service and per distinct Pod selector). Also owns reading this node's zone from its Node object. Must not
know clusters beyond the callbacks it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from lightkube.resources.core_v1 import Node, Pod
from lightkube.resources.discovery_v1 import EndpointSlice

from proxy.config.model import KubernetesDiscoveryConfig
from proxy.discovery.kube_api import KubeApi, KubeError
from proxy.discovery.kube_watch import Objects, ResourceWatch, WatchRegistry
from proxy.discovery.snapshot import DiscoveredEndpoint, EndpointSet

log = logging.getLogger("proxy.discovery.kubernetes")

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
ZONE_LABELS: Final = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")


def slices_path(namespace: str) -> str:
    return f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def slice_port(slice_: Any, port: int | str) -> int | None:
    """The port number `port` (a name or a number) has in this slice, or None when it has none."""
    for candidate in slice_.ports or ():
        if candidate.port is None:
            continue
        if (candidate.name == port) if isinstance(port, str) else (candidate.port == port):
            return int(candidate.port)
    return None


def endpoint_set(slices: Objects, port: int | str, pods: set[str] | None) -> EndpointSet:
    """The snapshot the slices describe: one entry per address serving `port`, sorted; only endpoints
    backed by one of `pods` when a subset is asked for (`pods` not None)."""
    found: dict[tuple[str, int], DiscoveredEndpoint] = {}
    for name in sorted(slices):
        slice_ = slices[name]
        if slice_.addressType not in ("IPv4", "IPv6"):
            continue  # FQDN slices name hosts, not Pods; a Service's own slices never are
        number = slice_port(slice_, port)
        if number is None:
            continue
        for endpoint in slice_.endpoints or ():
            for discovered in _discovered(endpoint, number, pods):
                key = (discovered.host, discovered.port)
                held = found.get(key)
                # One address in two slices (mid-update): a ready entry wins over a terminating one.
                if held is None or (held.terminating and not discovered.terminating):
                    found[key] = discovered
    return tuple(found[key] for key in sorted(found))


def _discovered(endpoint: Any, port: int, pods: set[str] | None) -> list[DiscoveredEndpoint]:
    conditions = endpoint.conditions
    ready = conditions is None or conditions.ready is not False
    terminating = conditions is not None and conditions.terminating is True
    serving = ready if conditions is None or conditions.serving is None else conditions.serving is True
    if terminating:
        if not serving:
            return []
    elif not ready:
        return []
    target = endpoint.targetRef
    pod = target.name if target is not None and target.kind == "Pod" else None
    if pods is not None and pod not in pods:
        return []
    hints = endpoint.hints
    for_zones = tuple(zone.name for zone in hints.forZones) if hints is not None and hints.forZones else ()
    return [DiscoveredEndpoint(str(address), port, endpoint.zone, for_zones, terminating, 1, pod)
            for address in endpoint.addresses]


class ServiceEndpoints:
    """Feeds one cluster from its `discovery.kubernetes` config: subscribes to the shared watches, rebuilds
    the snapshot on every change and delivers it when it differs from the last one delivered."""

    def __init__(self, cluster: str, config: KubernetesDiscoveryConfig, registry: WatchRegistry,
                 deliver: Callable[[EndpointSet], None], on_error: Callable[[str], None] | None = None) -> None:
        self.cluster = cluster
        self.config = config
        self._registry = registry
        self._deliver = deliver
        self._on_error = on_error
        self._slices: Objects | None = None
        self._pods: set[str] | None = None
        self.current: EndpointSet | None = None
        self.slice_watch: ResourceWatch[Any] | None = None
        self.pod_watch: ResourceWatch[Any] | None = None

    def start(self) -> None:
        config = self.config
        if config.labels:
            self.pod_watch = self._registry.subscribe(pods_path(config.namespace), Pod, dict(config.labels),
                                                      self._on_pods, self._on_error)
        self.slice_watch = self._registry.subscribe(slices_path(config.namespace), EndpointSlice,
                                                    {SERVICE_NAME_LABEL: config.service}, self._on_slices,
                                                    self._on_error)

    def stop(self) -> None:
        if self.slice_watch is not None:
            self._registry.unsubscribe(self.slice_watch, self._on_slices, self._on_error)
            self.slice_watch = None
        if self.pod_watch is not None:
            self._registry.unsubscribe(self.pod_watch, self._on_pods, self._on_error)
            self.pod_watch = None

    def _on_slices(self, slices: Objects) -> None:
        self._slices = slices
        self._update()

    def _on_pods(self, pods: Objects) -> None:
        self._pods = set(pods)
        self._update()

    def _update(self) -> None:
        if self._slices is None or (self.config.labels and self._pods is None):
            return  # not listed yet: readiness keeps waiting rather than routing to a partial view
        endpoints = endpoint_set(self._slices, self.config.port, self._pods if self.config.labels else None)
        if endpoints == self.current:
            return
        log.info("cluster %s: service %s/%s has %d endpoint(s) on port %s", self.cluster, self.config.namespace,
                 self.config.service, len(endpoints), self.config.port)
        self.current = endpoints
        self._deliver(endpoints)

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows of this discovery."""
        config = self.config
        view: dict[str, object] = {
            "source": "kubernetes",
            "service": config.service,
            "namespace": config.namespace,
            "port": config.port,
            "labels": dict(config.labels),
            "synced": self.current is not None,
            "api_server": self._registry.api.server,
        }
        if self.slice_watch is not None:
            view["endpointslices"] = self.slice_watch.snapshot()
        if self.pod_watch is not None:
            view["pods"] = self.pod_watch.snapshot()
        return view


async def node_zone(api: KubeApi, node_name: str) -> str | None:
    """This node's zone from its Node's labels; None when it has none. Raises `KubeError` (for example
    "forbidden" when the service account may not read Nodes: zone preference then stays off)."""
    node = await api.get(f"/api/v1/nodes/{node_name}", Node)
    labels = node.metadata.labels if node.metadata is not None else None
    for label in ZONE_LABELS:
        if labels and labels.get(label):
            return str(labels[label])
    return None


__all__ = ["KubeError", "ServiceEndpoints", "endpoint_set", "node_zone"]
