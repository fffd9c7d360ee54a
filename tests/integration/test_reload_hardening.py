"""Reloads that must not hurt traffic, through a real `python -m proxy run` process, real signals, a real
upstream and timed client requests: an alias bomb written into the running sidecar's file, a 3000-route
config arriving with a burst of SIGHUPs, and a new `admin.address` that cannot be bound (with one process,
and with a supervisor and two workers)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port
from tests.integration.upstreams import Upstream, start_upstream

REPO = Path(__file__).resolve().parents[2]
# A healthy request through the sidecar, against a local upstream, takes about a millisecond; a reload
# must not stretch one past this.
LATENCY_BOUND = 0.1


def config(upstream: str, admin: int, *, header: str = "one", routes: int = 0, workers: int = 1) -> str:
    """One listener whose first route answers the probe; `routes` more routes make the file large."""
    extra = "".join(
        f"      - name: route-{i}\n"
        f"        match: {{prefix: /api/v{i}/items, headers: {{x-tenant: {{exact: tenant-{i}}}}}}}\n"
        f"        cluster: backend\n"
        f"        timeout: 5s\n"
        f"        headers: {{request: {{set: {{x-route: r{i}}}}}}}\n"
        f"        retries: {{attempts: 2, on: [connect-failure, gateway-error]}}\n"
        for i in range(routes))
    return (f'admin: {{address: "127.0.0.1:{admin}"}}\n'
            f"workers: {workers}\n"
            "drain_timeout: 2s\n"
            "listeners:\n"
            "  - name: outbound\n"
            '    address: "127.0.0.1:0"\n'
            "    routes:\n"
            "      - name: probe\n"
            "        match: {prefix: /probe}\n"
            "        cluster: backend\n"
            f"        headers: {{response: {{set: {{x-config: {header}}}}}}}\n"
            f"{extra}"
            "clusters:\n"
            f'  - {{name: backend, endpoints: ["{upstream}"]}}\n')


class Sidecar:
    """`python -m proxy run` in a subprocess; stderr collected line by line on a thread."""

    def __init__(self, path: Path, admin: int) -> None:
        self.admin = admin
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(path)], cwd=REPO,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    async def started(self) -> int:
        """The listener's port, from the first log line."""
        await self.until(lambda: bool(self.lines), "no log line from the sidecar")
        found = re.search(r"outbound=127\.0\.0\.1:(\d+)", self.lines[0])
        assert found, self.lines[0]
        return int(found.group(1))

    async def until(self, condition: Callable[[], bool], why: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"sidecar exited ({self.proc.returncode}):\n{self.log()}"
            assert time.monotonic() < deadline, f"{why}:\n{self.log()}"
            await asyncio.sleep(0.02)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    running = await start_upstream()
    yield running
    await running.stop()


@pytest.fixture
def sidecars() -> Iterator[list[Sidecar]]:
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.stop()


class Prober:
    """Sends one request at a time through the sidecar (keep-alive) and records how long each took."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.config_headers: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Prober:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.2)  # some requests before the reload, for comparison
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{self.port}/probe") as response:
                    await response.read()
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(response.status)
                self.config_headers.append(response.headers.get("x-config", ""))
                await asyncio.sleep(0.005)


async def metrics(admin: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
            text = await response.text()
    found = re.findall(r'^sidecar_config_reloads_total\{result="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {result: float(value) for result, value in found}


async def version(admin: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin}/config_dump") as response:
            dumped = await response.json()
    return str(dumped["version_hash"])


def bomb() -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8)]
    return "\n".join(lines) + "\n"


async def start_sidecar(tmp_path: Path, upstream: Upstream, sidecars: list[Sidecar],
                        workers: int = 1) -> tuple[Sidecar, Path, int, int, str]:
    """A running sidecar: (sidecar, config path, admin port, listener port, version in force)."""
    admin = free_port()
    path = tmp_path / "sidecar.yaml"
    path.write_text(config(upstream.address, admin, workers=workers))
    sidecar = Sidecar(path, admin)
    sidecars.append(sidecar)
    port = await sidecar.started()
    return sidecar, path, admin, port, await version(admin)


async def test_an_alias_bomb_written_into_the_running_config_is_refused_while_traffic_flows(
        tmp_path: Path, upstream: Upstream, sidecars: list[Sidecar]) -> None:
    sidecar, path, admin, port, before = await start_sidecar(tmp_path, upstream, sidecars)
    async with Prober(port) as prober:
        path.write_text(config(upstream.address, admin) + bomb())  # the file watch notices it within 2 s
        sidecar.proc.send_signal(signal.SIGHUP)  # and so does a SIGHUP: one refusal between them
        await sidecar.until(lambda: sidecar.count("reload refused: ") > 0, "the bomb was not refused")
        await asyncio.sleep(1.5)  # the file watch's report, after the SIGHUP's
    assert set(prober.statuses) == {200}
    assert max(prober.latencies) < LATENCY_BOUND, max(prober.latencies)
    assert sidecar.count("expands the config past the limit of 100000 YAML nodes") == 1
    assert await version(admin) == before
    assert await metrics(admin) == {"success": 0.0, "failure": 1.0}


async def test_a_burst_of_sighups_with_a_3000_route_config_is_one_reload_and_no_stall(
        tmp_path: Path, upstream: Upstream, sidecars: list[Sidecar]) -> None:
    sidecar, path, admin, port, _ = await start_sidecar(tmp_path, upstream, sidecars)
    async with Prober(port) as prober:
        path.write_text(config(upstream.address, admin, header="two", routes=3000))
        for _ in range(10):
            sidecar.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.01)
        await sidecar.until(lambda: sidecar.count("reloaded ") > 0, "the 3000 routes were not reloaded")
        await asyncio.sleep(1.5)  # the file watch (and any straggling reload) has reported by now
    assert set(prober.statuses) == {200}
    assert prober.config_headers[0] == "one" and prober.config_headers[-1] == "two"
    assert max(prober.latencies) < LATENCY_BOUND, sorted(prober.latencies)[-5:]
    # Ten signals, and the file watch: the first reload parses the file, the rest collapse into at most one
    # follow-up, which finds the hash unchanged and parses nothing.
    assert sidecar.count("reloaded ") == 1
    assert sidecar.count("unchanged") <= 2  # the coalesced follow-up, and the file watch's report
    assert await metrics(admin) == {"success": 1.0, "failure": 0.0}


async def test_an_admin_address_that_cannot_be_bound_keeps_the_old_admin_and_the_old_config(
        tmp_path: Path, upstream: Upstream, sidecars: list[Sidecar]) -> None:
    sidecar, path, admin, port, before = await start_sidecar(tmp_path, upstream, sidecars)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        path.write_text(config(upstream.address, taken_port, header="two"))
        sidecar.proc.send_signal(signal.SIGHUP)
        await sidecar.until(lambda: sidecar.count("reload refused: ") > 0, "the reload was not refused")
        await asyncio.sleep(1.5)  # the file watch reports the same edit: not tried or counted again
    assert sidecar.count(f"cannot bind admin 127.0.0.1:{taken_port}: Address already in use") == 1, sidecar.log()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{admin}/ready") as response:
            assert response.status == 200
        async with session.get(f"http://127.0.0.1:{port}/probe") as response:
            assert response.status == 200 and response.headers["x-config"] == "one"
    assert await version(admin) == before
    assert await metrics(admin) == {"success": 0.0, "failure": 1.0}


async def probe_configs(port: int, count: int = 20) -> set[str]:
    """The x-config header over `count` new connections (spread over the workers by the kernel)."""
    seen = set()
    for _ in range(count):
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/probe") as response:
                assert response.status == 200
                seen.add(response.headers["x-config"])
    return seen


async def test_with_workers_the_supervisor_refuses_an_unbindable_admin_for_all_and_moves_a_bindable_one(
        tmp_path: Path, upstream: Upstream, sidecars: list[Sidecar]) -> None:
    sidecar, path, admin, port, before = await start_sidecar(tmp_path, upstream, sidecars, workers=2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        path.write_text(config(upstream.address, taken_port, header="two", workers=2))
        sidecar.proc.send_signal(signal.SIGHUP)
        await sidecar.until(lambda: sidecar.count("reload refused: ") > 0, "the reload was not refused")
        await asyncio.sleep(1.5)  # the file watch reports the same edit: not tried or counted again
    # Refused once, by the supervisor: no worker applied the new routes.
    assert sidecar.count(f"cannot bind admin 127.0.0.1:{taken_port}: Address already in use") == 1, sidecar.log()
    assert await probe_configs(port) == {"one"}
    assert await version(admin) == before
    assert await metrics(admin) == {"success": 0.0, "failure": 1.0}

    moved = free_port()
    path.write_text(config(upstream.address, moved, header="three", workers=2))
    sidecar.proc.send_signal(signal.SIGHUP)
    await sidecar.until(lambda: sidecar.count("admin moved to ") > 0, "the admin did not move")
    await sidecar.until(lambda: sidecar.count("reloaded ") == 2, "the workers did not reload")
    assert await probe_configs(port) == {"three"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{moved}/ready") as response:
            assert response.status == 200, await response.text()
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(f"http://127.0.0.1:{admin}/ready")
    assert await metrics(moved) == {"success": 1.0, "failure": 1.0}
    # The listener is configured with port 0: every worker keeps the port they share, reload or not.
    assert sidecar.count("draining its old address") == 0, sidecar.log()


async def test_with_workers_a_new_listener_that_cannot_be_bound_is_refused_by_the_supervisor(
        tmp_path: Path, upstream: Upstream, sidecars: list[Sidecar]) -> None:
    sidecar, path, admin, port, before = await start_sidecar(tmp_path, upstream, sidecars, workers=2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        extra = (f"  - name: second\n    address: \"127.0.0.1:{taken_port}\"\n"
                 "    routes: [{name: all, match: {prefix: /}, cluster: backend}]\n")
        text = config(upstream.address, admin, header="two", workers=2).replace("clusters:\n", extra + "clusters:\n")
        path.write_text(text)
        sidecar.proc.send_signal(signal.SIGHUP)
        await sidecar.until(lambda: sidecar.count("reload refused: ") > 0, "the reload was not refused")
    # Refused once, by the supervisor, before any worker saw it: the snapshot workers restart from is the
    # running config, not one they would refuse.
    assert sidecar.count(f"cannot bind listener second at 127.0.0.1:{taken_port}") == 1, sidecar.log()
    assert sidecar.count("reload approved") == 0, sidecar.log()
    assert await probe_configs(port) == {"one"}
    assert await version(admin) == before
    assert await metrics(admin) == {"success": 0.0, "failure": 1.0}
