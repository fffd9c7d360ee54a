"""The admin server on a unix socket (a worker's admin view) and with a source that answers asynchronously
(a multi-worker supervisor that asks its workers)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.admin.server import AdminServer
from tests.unit.admin.test_server import FakeSource


class AsyncSource(FakeSource):
    """The same knobs, but every answer that may need I/O is a coroutine."""

    async def ready(self) -> tuple[bool, str]:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().ready()

    async def config_dump(self) -> dict[str, Any]:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().config_dump()

    async def clusters(self) -> dict[str, Any]:  # type: ignore[override]
        await asyncio.sleep(0)
        self._maybe_fail("clusters")
        return {"workers": [{"index": 0, "clusters": []}]}

    async def set_log_level(self, level: str) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().set_log_level(level)


@pytest.fixture
async def unix(tmp_path: Path) -> AsyncIterator[tuple[FakeSource, aiohttp.ClientSession, str]]:
    path = str(tmp_path / "admin.sock")
    source = FakeSource()
    server = AdminServer(source, "", 0, unix_path=path)
    assert await server.start() == 0
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session:
            yield source, session, path
    finally:
        await server.stop()


async def test_every_endpoint_answers_on_a_unix_socket(unix: tuple[FakeSource, aiohttp.ClientSession, str]) -> None:
    _, session, _ = unix
    async with session.get("http://worker/ready") as r:
        assert (r.status, await r.text()) == (200, "ready\n")
    async with session.get("http://worker/metrics") as r:
        assert "sidecar_requests_total" in await r.text()
    async with session.get("http://worker/config_dump") as r:
        assert (await r.json())["version_hash"] == "abc123"


async def test_unix_socket_clients_count_as_local(unix: tuple[FakeSource, aiohttp.ClientSession, str]) -> None:
    # Reaching the socket needs access to the supervisor's private directory: that is the access check.
    source, session, _ = unix
    async with session.post("http://worker/logging?level=debug") as r:
        assert r.status == 200
    assert source.level == "debug"
    async with session.post("http://worker/shutdown") as r:
        assert r.status == 200
    assert source.shutdowns == 1


async def test_curl_over_the_unix_socket(unix: tuple[FakeSource, aiohttp.ClientSession, str]) -> None:
    exe = shutil.which("curl")
    if exe is None:
        pytest.skip("curl not installed")
    _, _, path = unix
    proc = await asyncio.create_subprocess_exec(exe, "-sS", "--unix-socket", path, "http://worker/live",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out == b"live\n"


async def test_an_async_source_is_awaited() -> None:
    source = AsyncSource()
    server = AdminServer(source, "127.0.0.1", 0)
    port = await server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/ready") as r:
                assert r.status == 200
            source.is_ready, source.reason = False, "worker 1 restarting (killed by SIGKILL)"
            async with session.get(f"{base}/ready") as r:
                assert r.status == 503 and "worker 1 restarting" in await r.text()
            async with session.get(f"{base}/clusters") as r:
                assert (await r.json()) == {"workers": [{"index": 0, "clusters": []}]}
            async with session.get(f"{base}/config_dump") as r:
                assert (await r.json())["version_hash"] == "abc123"
            async with session.post(f"{base}/logging?level=warning") as r:
                assert r.status == 200
            assert source.level == "warning"
            source.fail.add("clusters")
            async with session.get(f"{base}/clusters") as r:
                assert r.status == 500 and "secret" not in await r.text()
    finally:
        await server.stop()
