"""`workers: N`: a supervisor process with N SO_REUSEPORT workers, run as users run it (`python -m proxy
run`), with real clients, a real upstream, and real signals: traffic spreads over the workers, the admin
endpoint adds their metrics up, a killed worker comes back, and nothing outlives the supervisor."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.integration.upstreams import Upstream, start_upstream

REPO = Path(__file__).resolve().parents[2]


def config(upstream: str, admin: int, port: int = 0, workers: int = 2) -> str:
    return f"""
workers: {workers}
drain_timeout: 5s
admin: {{address: "127.0.0.1:{admin}"}}
listeners:
  - name: outbound
    address: "127.0.0.1:{port}"
    routes: [{{name: all, match: {{prefix: /}}, cluster: backend, headers: {{request: {{set: {{x-auth: s3cret}}}}}}}}]
clusters:
  - name: backend
    endpoints: ["{upstream}"]
"""


class Supervised:
    """`python -m proxy run` in a subprocess; its stderr is collected line by line on a thread."""

    def __init__(self, path: Path, admin: int, *extra: str) -> None:
        self.admin = admin
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(path), *extra], cwd=REPO,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    async def first_line(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while not self.lines:
            assert self.proc.poll() is None, f"sidecar exited early ({self.proc.returncode})"
            assert time.monotonic() < deadline, "no log line from the sidecar"
            await asyncio.sleep(0.05)
        return self.lines[0]

    def log(self) -> str:
        return "".join(self.lines)

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin}{path}"

    async def wait(self, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "the sidecar did not exit"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    running = await start_upstream()
    yield running
    await running.stop()


async def start(tmp_path: Path, upstream: Upstream, *extra: str, **options: Any) -> AsyncIterator[Supervised]:
    admin = free_port()
    path = tmp_path / "workers.yaml"
    path.write_text(config(upstream.address, admin, **options))
    supervised = Supervised(path, admin, *extra)
    try:
        yield supervised
    finally:
        supervised.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def snapshot_of(pid: int) -> Path:
    """The approved-config snapshot a worker was started with (its `--snapshot` argument)."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read().decode().split("\0")
    return Path(argv[argv.index("--snapshot") + 1])


async def gone(pids: list[int], timeout: float = 8) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def workers_of(session: aiohttp.ClientSession, sup: Supervised) -> list[dict[str, Any]]:
    async with session.get(sup.admin_url("/clusters")) as response:
        assert response.status == 200
        workers: list[dict[str, Any]] = (await response.json())["workers"]
        return workers


async def wait_ready(session: aiohttp.ClientSession, sup: Supervised, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(sup.admin_url("/ready")) as response:
            if response.status == 200:
                return
            text = await response.text()
        assert time.monotonic() < deadline, f"not ready: {text}"
        await asyncio.sleep(0.05)


async def send(url: str, count: int, concurrency: int = 20) -> list[int]:
    """`count` GETs, each on a fresh connection with `Connection: close` (so the kernel spreads them)."""
    statuses: list[int] = []
    queue = iter(range(count))
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            for _ in queue:
                async with session.get(url, headers={"Connection": "close"}) as response:
                    await response.read()
                    statuses.append(response.status)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return statuses


def listener_port(first_line: str) -> int:
    return int(first_line.split("outbound=127.0.0.1:", 1)[1].split(";")[0].split()[0])


async def test_two_workers_share_traffic_and_the_admin_endpoint_adds_them_up(
        tmp_path: Path, upstream: Upstream) -> None:
    async for sup in start(tmp_path, upstream):
        first = await sup.first_line()
        # Port 0 in the config: the workers still share one port (the first worker's).
        assert "outbound=127.0.0.1:" in first and f"admin 127.0.0.1:{sup.admin}" in first, first
        port = listener_port(first)
        async with aiohttp.ClientSession() as session:
            async with session.get(sup.admin_url("/ready")) as response:
                assert response.status == 200, await response.text()
            statuses = await send(f"http://127.0.0.1:{port}/hello", 400)
            assert statuses == [200] * 400
            workers = await workers_of(session, sup)
            assert [worker["index"] for worker in workers] == [0, 1]
            counts = [worker["clusters"][0]["endpoints"][0]["requests"] for worker in workers]
            assert all(count > 0 for count in counts), counts
            assert sum(counts) == 400
            async with session.get(sup.admin_url("/metrics")) as response:
                assert response.status == 200
                text = await response.text()
            async with session.get(sup.admin_url("/config_dump")) as response:
                # The supervisor shows a worker's dump (asked as Host worker-0 over its unix socket), redacted there.
                dump = await response.json()
                assert len(dump["version_hash"]) == 64 and "s3cret" not in json.dumps(dump)
            async with session.get(sup.admin_url("/config_dump"), headers={"Host": "evil.example"}) as response:
                assert response.status == 403
            async with session.get(sup.admin_url("/logging")) as response:
                assert (await response.json())["level"] == "info"
        families = {family.name: family for family in text_string_to_metric_families(text)}
        requests = [s for s in families["sidecar_requests"].samples if s.labels.get("cluster") == "backend"]
        assert [(s.labels["code"], s.value) for s in requests] == [("200", 400.0)]
        count = [s for s in families["sidecar_request_duration_seconds"].samples
                 if s.name.endswith("_count") and s.labels.get("cluster") == "backend"]
        assert [s.value for s in count] == [400.0]
        assert [s.labels for s in families["sidecar_downstream_connections"].samples] == [{"listener": "outbound"}]
        if shutil.which("promtool") is not None:
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                                   timeout=30)
            assert check.returncode == 0, check.stdout + check.stderr
        pids = [worker["pid"] for worker in workers]
        # SIGHUP reaches every worker (each reloads; the file is unchanged) and kills none of them.
        sup.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not all(any(f"worker-{i} " in line and "reload" in line for line in sup.lines) for i in (0, 1)):
            assert time.monotonic() < deadline, sup.log()
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            assert [worker["pid"] for worker in await workers_of(session, sup)] == pids
        sup.proc.send_signal(signal.SIGTERM)
        assert await sup.wait() == 0, sup.log()
        assert await gone(pids), "workers outlived the supervisor"
        assert "Traceback" not in sup.log()


async def test_a_killed_worker_is_restarted_and_traffic_keeps_flowing(tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    async for sup in start(tmp_path, upstream, port=port):
        await sup.first_line()
        async with aiohttp.ClientSession() as session:
            before = await workers_of(session, sup)
            victim = before[1]["pid"]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while True:
                after = await workers_of(session, sup)
                if after[1]["pid"] not in (None, victim):
                    break
                assert time.monotonic() < deadline, after
                await asyncio.sleep(0.05)
            assert after[0]["pid"] == before[0]["pid"]
            await wait_ready(session, sup)
            assert await send(f"http://127.0.0.1:{port}/again", 100) == [200] * 100
            assert f"worker 1 (pid {victim}) killed by SIGKILL; restarting" in sup.log()
            # POST /shutdown drains every worker, as SIGTERM does.
            async with session.post(sup.admin_url("/shutdown")) as response:
                assert response.status == 200
        assert await sup.wait() == 0, sup.log()
        assert await gone([before[0]["pid"], after[1]["pid"]])


async def test_a_crash_looping_worker_backs_off_then_recovers(tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    async for sup in start(tmp_path, upstream, port=port):
        await sup.first_line()
        async with aiohttp.ClientSession() as session:
            victim, survivor = (worker["pid"] for worker in await workers_of(session, sup))
            # A restarted worker reads the supervisor's snapshot of the config it approved (a broken file is
            # refused before any worker sees it): while the snapshot is broken, worker 0 cannot start again.
            snapshot = snapshot_of(survivor)
            good = snapshot.read_text()
            snapshot.write_text(good + "bogus: 1\n")
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while "retrying in 1s" not in sup.log():
                assert time.monotonic() < deadline, sup.log()
                await asyncio.sleep(0.05)
            log = sup.log()
            assert f"worker 0 (pid {victim}) killed by SIGKILL; restarting in 0.5s" in log
            assert "worker 0 failed to start: exited with code 1; retrying in 1s" in log
            async with session.get(sup.admin_url("/ready")) as response:
                assert response.status == 503
                assert "worker 0 restarting (failed to start: exited with code 1)" in await response.text()
            # Worker 1 keeps serving meanwhile.
            assert await send(f"http://127.0.0.1:{port}/meanwhile", 20) == [200] * 20
            snapshot.write_text(good)
            await wait_ready(session, sup)
        sup.proc.send_signal(signal.SIGTERM)
        assert await sup.wait() == 0, sup.log()


async def test_workers_option_overrides_the_file_and_a_killed_supervisor_leaves_no_workers(
        tmp_path: Path, upstream: Upstream) -> None:
    async for sup in start(tmp_path, upstream, "--workers", "3", workers=1):
        first = await sup.first_line()
        assert "3 workers" in first
        async with aiohttp.ClientSession() as session:
            pids = [worker["pid"] for worker in await workers_of(session, sup)]
        assert len(pids) == 3 and all(pids)
        sup.proc.kill()  # SIGKILL: no chance to forward anything
        sup.proc.wait()
        assert await gone(pids), "orphaned workers"


async def test_cannot_start_when_the_port_is_taken(tmp_path: Path, upstream: Upstream) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        async for sup in start(tmp_path, upstream, port=taken.getsockname()[1]):
            assert await sup.wait() == 1
            lines = sup.log().strip().splitlines()
            assert lines[-1].startswith("sidecar: cannot start: workers 0, 1: "), lines
            assert "in use" in lines[-1]
            assert "Traceback" not in sup.log()
