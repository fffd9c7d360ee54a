"""Hot reload through real sockets: SIGHUP-style reloads under load, invalid files, kept pools,
listener moves, and the file watch."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import app as app_module
from proxy.app import App
from proxy.config.load import load_config
from tests.integration.upstreams import start_upstream


def config(first: str, second: str, route_cluster: str, port: int = 0, header: str = "one") -> str:
    return textwrap.dedent(f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:{port}"
        routes:
          - name: main
            match: {{prefix: /}}
            cluster: {route_cluster}
            headers: {{response: {{set: {{x-config: {header}}}}}}}
    clusters:
      - name: first
        endpoints: ["{first}"]
      - name: second
        endpoints: ["{second}"]
    """)


def with_admin(text: str, address: str) -> str:
    return text.replace('admin: {address: "127.0.0.1:0"}', f'admin: {{address: "{address}"}}')


async def started(path: Path) -> App:
    app = App(load_config(path))
    await app.start()
    return app


async def test_reload_under_load_switches_routes_without_a_failed_request(tmp_path: Path) -> None:
    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(one.address, two.address, "first"))
    app = await started(path)
    port = app.bound["outbound"][1]
    seen: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:  # keep-alive: reloads must apply on it too
            while not stop.is_set():
                async with session.get(f"http://127.0.0.1:{port}/x") as response:
                    seen.append((response.status, (await response.json())["name"]))

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.3)
    path.write_text(config(one.address, two.address, "second", header="two"))
    assert await app.reload()
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*clients)
    assert seen and all(status == 200 for status, _ in seen)
    names = [name for _, name in seen]
    assert names[0] == "one" and names[-1] == "two"
    # once switched, never back (each request reads the route table once)
    assert "one" not in names[names.index("two"):][len(clients):]
    assert app.loaded.version_hash == load_config(path).version_hash
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_invalid_reload_changes_nothing_and_counts_a_failure(tmp_path: Path) -> None:
    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(one.address, two.address, "first"))
    app = await started(path)
    version = app.loaded.version_hash
    path.write_text(config(one.address, two.address, "no-such-cluster") + "bogus: 1\n")
    assert not await app.reload()
    assert not await app.reload()  # SIGHUP and the file watch report the same edit: refused, counted once
    assert app.loaded.version_hash == version
    port, admin = app.bound["outbound"][1], app.bound["admin"][1]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 200 and (await response.json())["name"] == "one"
        async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
            text = await response.text()
        async with session.get(f"http://127.0.0.1:{admin}/config_dump") as response:
            assert (await response.json())["version_hash"] == version
    assert 'sidecar_config_reloads_total{result="failure"} 1.0' in text
    assert 'sidecar_config_reloads_total{result="success"} 0.0' in text
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_unchanged_clusters_keep_their_pools_and_idle_connections_survive(tmp_path: Path) -> None:
    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(one.address, two.address, "first"))
    app = await started(path)
    port = app.bound["outbound"][1]
    first_cluster = app.clusters["first"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.headers["x-config"] == "one"
        pooled = first_cluster.endpoints[0].pool.idle_count
        assert pooled == 1
        path.write_text(config(one.address, two.address, "first", header="two"))  # only the route changes
        assert await app.reload()
        assert app.clusters["first"] is first_cluster
        assert first_cluster.endpoints[0].pool.idle_count == 1
        # the same idle keep-alive client connection still works, on the new route config
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.headers["x-config"] == "two"
        assert len(session.connector._conns) <= 1  # type: ignore[union-attr]
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_in_flight_request_finishes_on_the_config_it_started_with(tmp_path: Path) -> None:
    from aiohttp import web

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.Response(text="slow one")

    one = await start_upstream(slow, name="one")
    two = await start_upstream(name="two")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(one.address, two.address, "first"))
    app = await started(path)
    port = app.bound["outbound"][1]

    async def request() -> tuple[int, str, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                return response.status, await response.text(), response.headers["x-config"]

    in_flight = asyncio.create_task(request())
    await asyncio.sleep(0.1)
    path.write_text(config(one.address, two.address, "second", header="two").replace(
        f'"{one.address}"', '"127.0.0.1:1"'))  # the old cluster is replaced while the request runs
    assert await app.reload()
    assert await in_flight == (200, "slow one", "one")
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_listener_address_change_binds_the_new_and_drains_the_old(tmp_path: Path) -> None:
    from tests.conftest import free_port

    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    old_port, new_port = free_port(), free_port()
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(one.address, two.address, "first", port=old_port))
    app = await started(path)
    path.write_text(config(one.address, two.address, "first", port=new_port))
    assert await app.reload()
    assert app.bound["outbound"][1] == new_port
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{new_port}/") as response:
            assert response.status == 200
        try:
            async with session.get(f"http://127.0.0.1:{old_port}/") as response:
                raise AssertionError(f"old port still accepting: {response.status}")
        except aiohttp.ClientConnectorError:
            pass
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_file_change_on_disk_reloads_within_two_seconds(tmp_path: Path) -> None:
    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    target = tmp_path / "v1.yaml"
    target.write_text(config(one.address, two.address, "first"))
    link = tmp_path / "sidecar.yaml"
    link.symlink_to(target)  # a ConfigMap mounts its file through a symlink that is swapped
    app = await started(link)
    app.watch_config()
    port = app.bound["outbound"][1]
    replacement = tmp_path / "v2.yaml"
    replacement.write_text(config(one.address, two.address, "second", header="two"))
    swap = tmp_path / "swap"
    swap.symlink_to(replacement)
    swap.replace(link)
    name: Any = None
    async with aiohttp.ClientSession() as session:
        for _ in range(30):
            await asyncio.sleep(0.1)
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                name = (await response.json())["name"]
            if name == "two":
                break
    assert name == "two"
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_an_unchanged_or_already_refused_file_is_not_parsed_again(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(one.address, two.address, "first"))
    app = await started(path)
    parsed: list[bytes] = []
    real_parse = app_module.parse_config

    def counting_parse(raw: bytes, where: Path) -> Any:
        parsed.append(raw)
        return real_parse(raw, where)

    monkeypatch.setattr(app_module, "parse_config", counting_parse)
    assert await app.reload() and await app.reload()  # SIGHUPs with nothing edited
    assert parsed == []
    path.write_text("bogus: [\n")
    assert not await app.reload() and not await app.reload()
    assert len(parsed) == 1  # refused once; the same bytes again are not parsed (nor counted) again
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_a_refused_file_written_again_after_a_revert_is_refused_and_counted_again(tmp_path: Path) -> None:
    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    path = tmp_path / "sidecar.yaml"
    good = config(one.address, two.address, "first")
    path.write_text(good)
    app = await started(path)
    path.write_text("bogus: 1\n")
    assert not await app.reload()
    path.write_text(good)
    assert await app.reload()
    path.write_text("bogus: 1\n")
    assert not await app.reload()
    assert app.registry.get_sample_value("sidecar_config_reloads_total", {"result": "failure"}) == 2
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_reload_requests_during_a_reload_collapse_into_one_follow_up(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(one.address, two.address, "first"))
    app = await started(path)
    runs: list[float] = []
    real_reload = app.reload

    async def slow_reload() -> bool:
        runs.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.1)
        return await real_reload()

    monkeypatch.setattr(app, "reload", slow_reload)
    path.write_text(config(one.address, two.address, "second", header="two"))
    for _ in range(10):
        app.request_reload()
        await asyncio.sleep(0.005)
    while any(task.get_name() == "config reload" and not task.done() for task in asyncio.all_tasks()):
        await asyncio.sleep(0.01)
    assert len(runs) == 2  # the first request's reload, and one follow-up for the nine that came meanwhile
    assert app.loaded.version_hash == load_config(path).version_hash
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_admin_address_change_moves_the_admin_server(tmp_path: Path) -> None:
    from tests.conftest import free_port

    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    old_port, new_port = free_port(), free_port()
    path = tmp_path / "sidecar.yaml"
    path.write_text(with_admin(config(one.address, two.address, "first"), f"127.0.0.1:{old_port}"))
    app = await started(path)
    assert app.bound["admin"][1] == old_port
    path.write_text(path.read_text().replace(f"127.0.0.1:{old_port}", f"127.0.0.1:{new_port}"))
    assert await app.reload()
    assert app.bound["admin"] == ("127.0.0.1", new_port)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{new_port}/ready") as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(f"http://127.0.0.1:{old_port}/ready")
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_admin_moving_to_another_host_on_the_same_port_rebinds(tmp_path: Path) -> None:
    # 127.0.0.1:P and 0.0.0.0:P cannot both be bound: the old socket closes first, then the new one binds.
    from tests.conftest import free_port

    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    port = free_port()
    path = tmp_path / "sidecar.yaml"
    path.write_text(with_admin(config(one.address, two.address, "first"), f"127.0.0.1:{port}"))
    app = await started(path)
    path.write_text(path.read_text().replace(f"127.0.0.1:{port}", f"0.0.0.0:{port}"))
    assert await app.reload()
    assert app.bound["admin"] == ("0.0.0.0", port)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/ready") as response:
            assert response.status == 200
    await app.drain_and_stop()
    await one.stop()
    await two.stop()


async def test_a_listener_address_that_cannot_be_bound_changes_nothing(tmp_path: Path) -> None:
    import socket

    one, two = await start_upstream(name="one"), await start_upstream(name="two")
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(one.address, two.address, "first"))
    app = await started(path)
    version, clusters = app.loaded.version_hash, dict(app.clusters)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path.write_text(config(one.address, two.address, "second", port=taken.getsockname()[1], header="two")
                        .replace(f'"{one.address}"', '"127.0.0.1:1"'))  # a changed cluster, built then undone
        assert not await app.reload()
    assert app.loaded.version_hash == version and app.clusters == clusters
    port = app.bound["outbound"][1]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.headers["x-config"] == "one"
    await app.drain_and_stop()
    await one.stop()
    await two.stop()
