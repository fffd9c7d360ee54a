"""Kubernetes discovery against kmock (a Kubernetes API emulator we did not write), reached through a
kubeconfig, with real upstreams on loopback addresses standing in for Pod IPs (127.0.0.2, 127.0.0.3, ...
all on one port, as Pods of a Service are) and real requests through the sidecar.

kmock emulates list, watch and object changes; it does not end watches, send bookmarks or answer 410, so
the tests shorten the sidecar's watch (it gives a watch up after 1.5 s and watches again) and script 410s,
bookmarks and outages with kmock reactions.
"""

from __future__ import annotations

import asyncio
import collections
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock as km
import pytest

from proxy.app import App
from proxy.config.load import load_config
from tests.conftest import RunningSidecar, free_port
from tests.integration.admin_client import admin_json, metric
from tests.integration.upstreams import Upstream, start_upstream

TIMEOUT = aiohttp.ClientTimeout(total=5)
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
PODS = "/api/v1/namespaces/default/pods"
NODES = "/api/v1/nodes"
MERGE = {"content-type": "application/merge-patch+json"}


def endpoint(ip: str, *, ready: bool | None = True, serving: bool | None = None, terminating: bool | None = None,
             zone: str | None = None, for_zones: list[str] | None = None, pod: str | None = None) -> dict[str, Any]:
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
                  if v is not None}
    item: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if zone is not None:
        item["zone"] = zone
    if for_zones is not None:
        item["hints"] = {"forZones": [{"name": z} for z in for_zones]}
    if pod is not None:
        item["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "default"}
    return item


def endpoint_slice(name: str, endpoints: list[dict[str, Any]], port: int, service: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


class Kube:
    """The emulated API server and what the tests do to it."""

    def __init__(self, server: Any, client: aiohttp.ClientSession) -> None:
        self.server = server
        self.client = client

    async def create(self, path: str, obj: dict[str, Any]) -> None:
        async with self.client.post(path, json=obj) as reply:
            assert reply.status < 300, await reply.text()

    async def patch(self, path: str, name: str, patch: dict[str, Any]) -> None:
        async with self.client.patch(f"{path}/{name}", json=patch, headers=MERGE) as reply:
            assert reply.status < 300, await reply.text()

    async def delete(self, path: str, name: str) -> None:
        async with self.client.delete(f"{path}/{name}") as reply:
            assert reply.status < 300, await reply.text()

    def delete_unseen(self, name: str) -> None:
        """Delete an object in the emulator's store without a watch event: what a watcher that is away (or
        whose resourceVersion expired) never hears about."""
        [key] = [key for key in self.server.objects if key[2] == name]
        self.server.objects[key].delete()

    def requests(self, action: Any) -> int:
        return len(self.server[action])


@pytest.fixture
async def kube(kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kube]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(textwrap.dedent(f"""
        apiVersion: v1
        kind: Config
        clusters: [{{name: kmock, cluster: {{server: "{str(kmock.url).rstrip('/')}"}}}}]
        users: [{{name: sidecar, user: {{token: test-token}}}}]
        contexts: [{{name: kmock, context: {{cluster: kmock, user: sidecar, namespace: default}}}}]
        current-context: kmock
        """))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # The kinds the sidecar reads exist before any object does (as on a real API server).
    for resource in ("discovery.k8s.io/v1/endpointslices", "v1/pods", "v1/nodes"):
        kmock.resources[resource] = {}
    async with aiohttp.ClientSession(base_url=str(kmock.url), timeout=TIMEOUT) as client:
        yield Kube(kmock, client)


def config(*clusters: str, zone: str | None = None) -> str:
    body = "\n".join(textwrap.indent(textwrap.dedent(c).strip(), "  ") for c in clusters)
    node = f"node: {{zone: {zone}}}\n" if zone else ""
    v2 = ("      - {name: v2, match: {prefix: /, headers: {x-version: {exact: v2}}}, cluster: web-v2}\n"
          if "name: web-v2" in body else "")
    return (f"{node}admin: {{address: '127.0.0.1:0'}}\n"
            "listeners:\n"
            "  - name: outbound\n"
            "    address: '127.0.0.1:0'\n"
            "    routes:\n"
            f"{v2}"
            "      - {name: main, match: {prefix: /}, cluster: web}\n"
            f"clusters:\n{body}\n")


WEB = """
- name: web
  connect_timeout: 1s
  discovery:
    kubernetes: {service: web, namespace: default, port: http}
"""


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningSidecar]]]:
    apps: list[App] = []

    async def run(text: str, node_name: str | None = None) -> RunningSidecar:
        path = tmp_path / "sidecar.yaml"
        path.write_text(text)
        app = App(load_config(path))
        app.node_name = node_name
        # kmock never ends a watch: give each up after 1.5 s (a real API server ends it at timeoutSeconds).
        app.discovery.watch_seconds = 1
        app.discovery.watch_grace = 0.5
        await app.start()
        apps.append(app)
        return RunningSidecar(app)

    yield run
    for app in apps:
        if not app.stopped.is_set():
            await app.drain_and_stop()


@pytest.fixture
async def pods() -> AsyncIterator[Callable[[int], Awaitable[list[Upstream]]]]:
    """Upstreams on 127.0.0.2, 127.0.0.3, ... sharing one port: the Pods of a Service."""
    started: list[Upstream] = []

    async def make(count: int, handler: Any = None) -> list[Upstream]:
        port = free_port()
        for _ in range(count):
            host = f"127.0.0.{len(started) + 2}"
            started.append(await start_upstream(handler, name=host, host=host, port=port))
        return started[-count:]

    yield make
    for upstream in started:
        await upstream.stop()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url, headers=headers) as reply:
        body = await reply.read()
        name = ""
        if reply.status == 200 and reply.content_type == "application/json":
            name = str((await reply.json())["name"])
        return reply.status, name or body.decode(errors="replace")


async def spread(running: RunningSidecar, count: int = 20, headers: dict[str, str] | None = None) -> dict[str, int]:
    """Which upstream answered each of `count` requests (status codes other than 200 counted by code)."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        status, name = await get(running.url("/"), headers)
        seen[name if status == 200 else str(status)] += 1
    return dict(seen)


async def endpoints_of(running: RunningSidecar, cluster: str = "web") -> dict[str, str]:
    clusters = (await admin_json(running, "/clusters"))["clusters"]
    [view] = [c for c in clusters if c["name"] == cluster]
    return {e["address"]: e["state"] for e in view["endpoints"]}


async def test_endpoints_appear_change_go_not_ready_and_are_deleted(kube: Kube, start: Any, pods: Any) -> None:
    a, b, c = await pods(3)
    running = await start(config(WEB))
    # No slice yet: listed (an empty set) and ready, answering 503 for want of endpoints.
    await eventually(lambda: _ready(running))
    assert (await get(running.url("/")))[0] == 503

    await kube.create(SLICES, endpoint_slice("web-1", [endpoint(a.host, pod="a"), endpoint(b.host, pod="b")],
                                             a.port))
    await eventually(lambda: _has(running, {a.address: "ready", b.address: "ready"}))
    assert await spread(running, 10) == {a.host: 5, b.host: 5}
    view = (await admin_json(running, "/clusters"))["clusters"][0]
    assert view["discovery"]["source"] == "kubernetes" and view["discovery"]["service"] == "web"
    assert view["discovery"]["endpointslices"]["synced"] is True
    assert {e["pod"] for e in view["endpoints"]} == {"a", "b"}
    assert {e["source"] for e in view["endpoints"]} == {"kubernetes"}

    # A second slice of the same Service adds c; a change of the first drops b.
    await kube.create(SLICES, endpoint_slice("web-2", [endpoint(c.host)], c.port))
    await kube.patch(SLICES, "web-1", {"endpoints": [endpoint(a.host)]})
    await eventually(lambda: _has(running, {a.address: "ready", c.address: "ready"}))
    assert set(await spread(running, 10)) == {a.host, c.host}

    # Not ready (and not terminating): out of the set.
    await kube.patch(SLICES, "web-2", {"endpoints": [endpoint(c.host, ready=False)]})
    await eventually(lambda: _has(running, {a.address: "ready"}))
    assert await spread(running, 5) == {a.host: 5}

    # Deleted: gone; nothing left to route to.
    await kube.delete(SLICES, "web-1")
    await eventually(lambda: _has(running, {}))
    assert (await get(running.url("/")))[0] == 503
    assert await metric(running, "sidecar_endpoints", cluster="web") == 0


async def test_terminating_endpoints_take_nothing_new_and_finish_what_they_have(kube: Kube, start: Any,
                                                                                  pods: Any) -> None:
    release = asyncio.Event()

    async def slow_on_a(request: Any) -> Any:
        from aiohttp import web
        if request.path == "/slow":
            await release.wait()
        return web.json_response({"name": request.transport.get_extra_info("sockname")[0]})

    a, b = await pods(2, slow_on_a)
    await kube.create(SLICES, endpoint_slice("web-1", [endpoint(a.host)], a.port))
    running = await start(config(WEB))
    await eventually(lambda: _has(running, {a.address: "ready"}))
    in_flight = asyncio.create_task(get(running.url("/slow")))
    await eventually(lambda: _is(len(a.requests) == 1))

    await kube.patch(SLICES, "web-1", {"endpoints": [
        endpoint(a.host, ready=False, serving=True, terminating=True), endpoint(b.host)]})
    await eventually(lambda: _has(running, {a.address: "terminating", b.address: "ready"}))
    assert await spread(running, 6) == {b.host: 6}
    assert await metric(running, "sidecar_endpoints", cluster="web", state="terminating") == 1
    release.set()
    assert await in_flight == (200, a.host)  # the request it had finished


async def test_a_410_relists_and_notices_a_deletion_made_while_the_watch_was_away(kube: Kube, start: Any,
                                                                                   pods: Any) -> None:
    a, b = await pods(2)
    await kube.create(SLICES, endpoint_slice("web-1", [endpoint(a.host)], a.port))
    await kube.create(SLICES, endpoint_slice("web-2", [endpoint(b.host)], b.port))
    running = await start(config(WEB))
    await eventually(lambda: _has(running, {a.address: "ready", b.address: "ready"}))
    lists_before = kube.requests(km.action.LIST)

    # web-2 goes while nobody watches; the next watch is answered 410 Gone (its version expired).
    kube.delete_unseen("web-2")
    armed = [True]

    def gone() -> Any:
        if armed and armed.pop():
            return ({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                 "code": 410, "reason": "Expired", "message": "too old"}},)
        return None  # after the one 410, watches go back to the emulator

    kube.server[km.action.WATCH] << gone
    await eventually(lambda: _has(running, {a.address: "ready"}))
    assert kube.requests(km.action.LIST) > lists_before  # noticed by a re-list, not by an event
    assert await metric(running, "sidecar_discovery_errors_total", cluster="web", kind="gone") == 1
    assert await spread(running, 4) == {a.host: 4}


async def test_an_api_outage_keeps_the_last_endpoints_serving_and_backs_off(kube: Kube, start: Any,
                                                                           pods: Any) -> None:
    [a] = await pods(1)
    await kube.create(SLICES, endpoint_slice("web-1", [endpoint(a.host)], a.port))
    running = await start(config(WEB))
    await eventually(lambda: _has(running, {a.address: "ready"}))
    outage = [True]

    def down() -> Any:
        if outage:
            raise km.KubernetesError(status=503, reason="ServiceUnavailable", message="etcd is gone")
        return None

    kube.server[km.action.WATCH] << down
    kube.server[km.action.LIST] << down
    await eventually(lambda: _counted(running, "api_error"), seconds=5)
    watches_then = kube.requests(km.action.WATCH)
    await asyncio.sleep(2.5)
    # Backing off from 1 s: a handful of tries in 2.5 s, not a hot loop.
    assert kube.requests(km.action.WATCH) - watches_then <= 4
    assert await spread(running, 5) == {a.host: 5}  # the last known set keeps serving
    view = (await admin_json(running, "/clusters"))["clusters"][0]["discovery"]["endpointslices"]
    assert view["last_error"] == "api_error" and view["errors"] >= 1

    outage.clear()  # the API is back: changes flow again
    await kube.patch(SLICES, "web-1", {"endpoints": [endpoint(a.host, zone="z1")]})
    await eventually(lambda: _zone_is(running, a.address, "z1"), seconds=40)


async def test_pod_label_subsets_split_one_service_into_v1_and_v2(kube: Kube, start: Any, pods: Any) -> None:
    a, b, c = await pods(3)
    for name, version in (("a", "v1"), ("b", "v1"), ("c", "v2")):
        await kube.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                                 "metadata": {"name": name, "namespace": "default",
                                              "labels": {"app": "web", "version": version}}})
    await kube.create(SLICES, endpoint_slice("web-1", [endpoint(a.host, pod="a"), endpoint(b.host, pod="b"),
                                                        endpoint(c.host, pod="c")], a.port))
    v1 = WEB.replace("port: http}", "port: http, labels: {version: v1}}")
    v2 = WEB.replace("name: web", "name: web-v2").replace("port: http}", "port: http, labels: {version: v2}}")
    running = await start(config(v1, v2))
    await eventually(lambda: _has(running, {a.address: "ready", b.address: "ready"}))
    await eventually(lambda: _has(running, {c.address: "ready"}, "web-v2"))
    assert await spread(running, 6) == {a.host: 3, b.host: 3}
    assert await spread(running, 4, {"x-version": "v2"}) == {c.host: 4}
    # One watch of the Service's slices serves both clusters; one per distinct Pod selector.
    assert len(running.app.discovery.kube.watches) == 3

    # b is relabelled v2: it moves from one subset to the other.
    await kube.patch(PODS, "b", {"metadata": {"labels": {"app": "web", "version": "v2"}}})
    await eventually(lambda: _has(running, {a.address: "ready"}))
    await eventually(lambda: _has(running, {b.address: "ready", c.address: "ready"}, "web-v2"))


async def test_the_local_zone_is_preferred_and_left_when_it_has_no_healthy_endpoint(kube: Kube, start: Any,
                                                                                      pods: Any) -> None:
    a, b, c = await pods(3)
    await kube.create(SLICES, endpoint_slice("web-1", [endpoint(a.host, zone="z1"), endpoint(b.host, zone="z2"),
                                                        endpoint(c.host, zone="z2")], a.port))
    # The zone comes from the Node (spec.nodeName passed in; RBAC allows reading it here).
    await kube.create(NODES, {"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "z1"}}})
    running = await start(config(WEB), node_name="node-1")
    await eventually(lambda: _local_zone_is(running, "z1"))
    assert await spread(running, 6) == {a.host: 6}

    # The local endpoint goes; the other zone takes everything.
    await kube.patch(SLICES, "web-1", {"endpoints": [endpoint(a.host, zone="z1", ready=False),
                                                     endpoint(b.host, zone="z2"), endpoint(c.host, zone="z2")]})
    await eventually(lambda: _has(running, {b.address: "ready", c.address: "ready"}))
    assert await spread(running, 6) == {b.host: 3, c.host: 3}


async def test_topology_hints_choose_the_local_endpoints_when_every_endpoint_has_them(kube: Kube, start: Any,
                                                                                       pods: Any,
                                                                                       tmp_path: Path) -> None:
    a, b, c = await pods(3)
    # Hints can assign an endpoint to a zone it does not run in (kube-controller-manager balances them).
    await kube.create(SLICES, endpoint_slice("web-1", [
        endpoint(a.host, zone="z1", for_zones=["z1"]), endpoint(b.host, zone="z2", for_zones=["z1"]),
        endpoint(c.host, zone="z2", for_zones=["z2"])], a.port))
    running = await start(config(WEB, zone="z1"))  # node.zone set: the Node is not read
    await eventually(lambda: _has(running, {a.address: "ready", b.address: "ready", c.address: "ready"}))
    assert await spread(running, 8) == {a.host: 4, b.host: 4}
    # A reload that moves node.zone moves the preference (the cluster itself is unchanged and kept).
    cluster = running.app.clusters["web"]
    (tmp_path / "sidecar.yaml").write_text(config(WEB, zone="z2"))
    assert await running.app.reload()
    assert running.app.clusters["web"] is cluster
    assert await spread(running, 4) == {c.host: 4}


async def test_forbidden_is_counted_and_ready_waits(kube: Kube, start: Any) -> None:
    def forbidden() -> Any:
        raise km.KubernetesError(status=403, reason="Forbidden",
                                 message='endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:'
                                         'default:payment" cannot list resource "endpointslices"')

    kube.server[km.action.LIST] << forbidden
    running = await start(config(WEB))
    await eventually(lambda: _counted(running, "forbidden"))
    status, text = await get(running.admin_url("/ready"))
    assert status == 503 and "web" in text


async def test_a_reload_that_keeps_the_discovery_keeps_the_watch(kube: Kube, start: Any, pods: Any,
                                                                tmp_path: Path) -> None:
    [a] = await pods(1)
    await kube.create(SLICES, endpoint_slice("web-1", [endpoint(a.host)], a.port))
    running = await start(config(WEB))
    await eventually(lambda: _has(running, {a.address: "ready"}))
    [watch] = running.app.discovery.kube.watches.values()
    lists = watch.lists
    (tmp_path / "sidecar.yaml").write_text(config(WEB.replace("connect_timeout: 1s", "connect_timeout: 2s")))
    assert await running.app.reload()
    assert running.app.clusters["web"].config.connect_timeout == 2.0
    assert list(running.app.discovery.kube.watches.values()) == [watch] and watch.task is not None
    assert watch.lists == lists  # no second list: the new cluster got the set the watch holds
    assert await spread(running, 3) == {a.host: 3}


async def test_bookmarks_move_the_resource_version_on(kube: Kube, start: Any, pods: Any) -> None:
    [a] = await pods(1)
    await kube.create(SLICES, endpoint_slice("web-1", [endpoint(a.host)], a.port))
    sent = [True]

    def bookmark() -> Any:
        if sent and sent.pop():
            return ({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                                    "metadata": {"resourceVersion": "4711"}}}, ...)
        return None

    kube.server[km.action.WATCH] << bookmark
    running = await start(config(WEB))
    await eventually(lambda: _has(running, {a.address: "ready"}))

    async def resumed_from_the_bookmark() -> bool:
        return any(request.params.get("resourceVersion") == "4711" for request in kube.server[km.action.WATCH])

    await eventually(resumed_from_the_bookmark)
    assert await spread(running, 2) == {a.host: 2}


# -- checks ----------------------------------------------------------------------------------------


async def _is(value: bool) -> bool:
    return value


async def _ready(running: RunningSidecar) -> bool:
    return (await get(running.admin_url("/ready")))[0] == 200


async def _has(running: RunningSidecar, expected: dict[str, str], cluster: str = "web") -> bool:
    return await endpoints_of(running, cluster) == expected


async def _counted(running: RunningSidecar, kind: str) -> bool:
    return await metric(running, "sidecar_discovery_errors_total", cluster="web", kind=kind) >= 1


async def _zone_is(running: RunningSidecar, address: str, zone: str) -> bool:
    clusters = (await admin_json(running, "/clusters"))["clusters"]
    return any(e["address"] == address and e["zone"] == zone for e in clusters[0]["endpoints"])


async def _local_zone_is(running: RunningSidecar, zone: str) -> bool:
    return bool((await admin_json(running, "/clusters"))["clusters"][0]["local_zone"] == zone)


async def test_the_kubernetes_example_config_routes_to_its_discovered_subsets(kube: Kube, start: Any,
                                                                              pods: Any) -> None:
    from aiohttp import web

    async def answer(request: Any) -> Any:
        return web.json_response({"name": request.transport.get_extra_info("sockname")[0]})

    v1, v2 = await pods(2, answer)
    s1, s2 = await pods(2, answer)
    for name, version in (("campaign-a", "v1"), ("campaign-b", "v2")):
        await kube.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": "default", "labels": {"app": "campaign", "version": version}}})
    await kube.create(SLICES, endpoint_slice("campaign-1", [endpoint(v1.host, pod="campaign-a"),
                                                             endpoint(v2.host, pod="campaign-b")],
                                             v1.port, service="campaign-service"))
    sessions = endpoint_slice("sessions-1", [endpoint(s1.host), endpoint(s2.host)], s1.port, service="session-store")
    sessions["ports"] = [{"port": s1.port, "protocol": "TCP"}]  # an unnamed port, chosen by number
    await kube.create(SLICES, sessions)
    text = (Path(__file__).resolve().parents[2] / "config" / "kubernetes.yaml").read_text()
    text = text.replace("127.0.0.1:15000", "127.0.0.1:0").replace("127.0.0.1:15001", "127.0.0.1:0")
    text = text.replace("port: 8080}", f"port: {s1.port}}}").replace("/healthz", "/")
    running = await start(text)
    await eventually(lambda: _ready(running))
    assert await spread(running, 4, {"x-version": "v2"}) == {v2.host: 4}
    split = await spread(running, 40)
    assert set(split) <= {v1.host, v2.host} and split.get(v1.host, 0) > split.get(v2.host, 0)
    # Ring hash on x-user-id: each user sticks to one Pod; users spread over both.
    homes = set()
    for user in (f"user-{n}" for n in range(24)):  # 24 users on one Pod of two: odds below 1 in a million
        seen: collections.Counter[str] = collections.Counter()
        for _ in range(2):
            status, name = await get(running.url("/sessions/x"), {"x-user-id": user})
            seen[name if status == 200 else str(status)] += 1
        assert len(seen) == 1 and set(seen) <= {s1.host, s2.host}, seen
        homes |= set(seen)
    assert homes == {s1.host, s2.host}
