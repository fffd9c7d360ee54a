"""DNS discovery through real sockets: a cluster fed by resolving `localhost` (the stdlib resolver, in a
thread) reaches a real upstream; /ready waits for the first endpoint set; /clusters shows the source; a name
that does not resolve is counted in sidecar_discovery_errors_total; a reload that keeps the discovery config
keeps the resolver (and its set), one that changes it starts a new one."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy.app import App
from proxy.config.load import load_config
from proxy.discovery.dns import Addresses, getaddrinfo_lookup
from tests.conftest import RunningSidecar
from tests.integration.admin_client import admin_json, metric
from tests.integration.upstreams import start_upstream

TIMEOUT = aiohttp.ClientTimeout(total=5)


def config(name: str, port: int, refresh: str = "1s", connect_timeout: str = "5s") -> str:
    return textwrap.dedent(f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - {{name: main, match: {{prefix: /}}, cluster: backend}}
    clusters:
      - name: backend
        connect_timeout: {connect_timeout}
        discovery:
          dns: {{name: {name}, port: {port}, refresh: {refresh}}}
    """)


async def status(url: str) -> int:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url) as reply:
        await reply.read()
        return reply.status


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_localhost_feeds_the_cluster_ready_waits_for_it_and_clusters_shows_dns(tmp_path: Path) -> None:
    upstream = await start_upstream(name="dns")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config("localhost", upstream.port))
    app = App(load_config(path))
    gate = asyncio.Event()

    async def gated(name: str, port: int) -> tuple[Addresses, float | None]:
        await gate.wait()  # hold the first answer back: /ready must wait for it
        addresses, ttl = await getaddrinfo_lookup(name, port)
        # localhost may also name ::1; the upstream listens on 127.0.0.1 only.
        return tuple(a for a in addresses if a[0] == "127.0.0.1"), ttl

    app.discovery.dns_lookup = gated
    await app.start()
    running = RunningSidecar(app)
    try:
        assert await status(running.admin_url("/ready")) == 503
        gate.set()
        await eventually(lambda: _is(status(running.admin_url("/ready")), 200))
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(running.url("/x")) as reply:
            assert reply.status == 200 and (await reply.json())["name"] == "dns"
        [backend] = (await admin_json(running, "/clusters"))["clusters"]
        assert [(e["address"], e["source"]) for e in backend["endpoints"]] == [
            (f"127.0.0.1:{upstream.port}", "dns")]
        assert backend["discovery"]["source"] == "dns" and backend["discovery"]["name"] == "localhost"
        assert backend["discovery"]["resolved"] is True
    finally:
        await app.drain_and_stop()
        await upstream.stop()


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def test_a_name_that_does_not_resolve_is_counted_and_keeps_ready_503(sidecar: Any) -> None:
    running = await sidecar(config("nothing-here.invalid", 80))

    async def counted() -> bool:
        return await metric(running, "sidecar_discovery_errors_total", cluster="backend") >= 1

    await eventually(counted)
    kinds = {k: await metric(running, "sidecar_discovery_errors_total", cluster="backend", kind=k)
             for k in ("nxdomain", "timeout", "empty", "other")}
    assert sum(kinds.values()) >= 1
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
            session.get(running.admin_url("/ready")) as reply:
        assert reply.status == 503 and "backend" in await reply.text()


async def test_a_reload_that_keeps_the_discovery_config_keeps_the_resolver(tmp_path: Path) -> None:
    upstream = await start_upstream(name="dns")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config("127.0.0.1", upstream.port))
    app = App(load_config(path))
    await app.start()
    running = RunningSidecar(app)
    try:
        await eventually(lambda: _is(status(running.admin_url("/ready")), 200))
        [resolver] = app.discovery.resolvers.values()
        task = resolver.task
        old_cluster = app.clusters["backend"]
        # Another cluster setting rebuilds the cluster; the same discovery config keeps the resolver.
        path.write_text(config("127.0.0.1", upstream.port, connect_timeout="2s"))
        assert await app.reload()
        assert app.clusters["backend"] is not old_cluster
        assert list(app.discovery.resolvers.values()) == [resolver] and resolver.task is task and not task.done()
        assert app.clusters["backend"].has_endpoints  # the kept set, at once: no unready gap
        assert resolver.subscribers == [app.clusters["backend"].set_endpoints]
        assert await status(running.url("/x")) == 200
        # A changed discovery config starts a new resolver and stops the old one.
        path.write_text(config("127.0.0.1", upstream.port, refresh="2s", connect_timeout="2s"))
        assert await app.reload()
        [fresh] = app.discovery.resolvers.values()
        assert fresh is not resolver
        await asyncio.sleep(0)
        assert task.cancelled() or task.done()
        await eventually(lambda: _is(status(running.url("/x")), 200))
    finally:
        await app.drain_and_stop()
        await upstream.stop()


async def test_a_changed_answer_moves_new_requests_and_lets_in_flight_ones_finish(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            await release.wait()
        return web.json_response({"name": "old"})

    old = await start_upstream(slow, name="old")
    new = await start_upstream(name="new")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config("localhost", old.port, refresh="100ms"))
    app = App(load_config(path))
    port = [old.port]

    async def switchable(name: str, _port: int) -> tuple[Addresses, float | None]:
        # The real resolver for `localhost`; which upstream's port it pairs with is the test's to switch.
        addresses, ttl = await getaddrinfo_lookup(name, port[0])
        return tuple(a for a in addresses if a[0] == "127.0.0.1"), ttl

    app.discovery.dns_lookup = switchable
    await app.start()
    running = RunningSidecar(app)
    try:
        await eventually(lambda: _is(status(running.admin_url("/ready")), 200))
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            in_flight = asyncio.create_task(session.get(running.url("/slow")))
            await eventually(lambda: _has_requests(old))
            old_endpoint = app.clusters["backend"].endpoints[0]
            port[0] = new.port
            await eventually(lambda: _serves(app, new.port))
            assert old_endpoint.state.value == "draining"
            assert await status(running.url("/x")) == 200
            assert len(new.requests) == 1
            release.set()
            reply = await in_flight
            assert reply.status == 200 and (await reply.json())["name"] == "old"
            reply.release()
        [backend] = (await admin_json(running, "/clusters"))["clusters"]
        assert [e["address"] for e in backend["endpoints"]] == [f"127.0.0.1:{new.port}"]
    finally:
        release.set()
        await app.drain_and_stop()
        await old.stop()
        await new.stop()


async def _has_requests(upstream: Any) -> bool:
    return bool(upstream.requests)


async def _serves(app: App, port: int) -> bool:
    return [e.port for e in app.clusters["backend"].endpoints] == [port]
