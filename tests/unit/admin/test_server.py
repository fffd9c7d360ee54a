"""The admin server on a real socket, queried with aiohttp's client and with curl."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import shutil
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from proxy.admin.server import AdminServer
from proxy.telemetry.exposition import render_metrics
from proxy.telemetry.metrics import Metrics

Client = aiohttp.ClientSession


class FakeSource:
    """An AdminSource with knobs: readiness, a level, a call log, and an optional failure."""

    def __init__(self) -> None:
        self.is_ready = True
        self.reason = ""
        self.level = "info"
        self.shutdowns = 0
        self.fail: set[str] = set()
        self.registry = CollectorRegistry()
        Metrics(self.registry).for_route("outbound", "r", "c").record(200, 0.01)

    def _maybe_fail(self, what: str) -> None:
        if what in self.fail:
            raise RuntimeError(f"secret internals of {what} exploded")

    def ready(self) -> tuple[bool, str]:
        self._maybe_fail("ready")
        return self.is_ready, self.reason

    def config_dump(self) -> dict[str, Any]:
        self._maybe_fail("config_dump")
        return {"version_hash": "abc123", "listeners": [{"name": "outbound"}]}

    def clusters(self) -> dict[str, Any]:
        self._maybe_fail("clusters")
        return {"c": {"endpoints": [{"address": "10.0.0.1:80", "healthy": True}]}}

    async def metrics(self, accept: str | None) -> tuple[bytes, str]:
        self._maybe_fail("metrics")
        return render_metrics(self.registry, accept)

    def request_shutdown(self) -> None:
        self._maybe_fail("request_shutdown")
        self.shutdowns += 1

    def log_level(self) -> str:
        self._maybe_fail("log_level")
        return self.level

    def set_log_level(self, level: str) -> None:
        self._maybe_fail("set_log_level")
        self.level = level


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
async def base(source: FakeSource) -> AsyncIterator[str]:
    server = AdminServer(source, "127.0.0.1", 0)
    port = await server.start()
    assert port == server.bound_port and port > 0
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def curl(*args: str) -> tuple[int, str, str]:
    """Run curl (as a subprocess, without blocking the loop that serves the admin) -> (status, type, body)."""
    exe = shutil.which("curl")
    if exe is None:
        pytest.skip("curl not installed")
    proc = await asyncio.create_subprocess_exec(
        exe, "-sS", "-o", "-", "-w", "\n%{http_code} %{content_type}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    body, _, tail = out.decode().rpartition("\n")
    code, _, ctype = tail.partition(" ")
    return int(code), ctype, body


async def test_live(base: str, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{base}/live") as r:
        assert r.status == 200
        assert await r.text() == "live\n"
    assert await curl(f"{base}/live") == (200, "text/plain; charset=utf-8", "live\n")


async def test_ready_and_not_ready(base: str, client: aiohttp.ClientSession, source: FakeSource) -> None:
    async with client.get(f"{base}/ready") as r:
        assert (r.status, await r.text()) == (200, "ready\n")
    source.is_ready, source.reason = False, "cluster campaign-v1 has no endpoint set yet"
    async with client.get(f"{base}/ready") as r:
        assert r.status == 503
        assert "cluster campaign-v1 has no endpoint set yet" in await r.text()
    code, _, body = await curl(f"{base}/ready")
    assert code == 503 and "campaign-v1" in body


async def test_metrics_text_and_openmetrics(base: str, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{base}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    assert 'sidecar_requests_total{cluster="c",code="200",listener="outbound",route="r"} 1.0' in text
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with client.get(f"{base}/metrics", headers=headers) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).endswith("# EOF\n")
    code, ctype, body = await curl(f"{base}/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert "sidecar_request_duration_seconds_bucket" in body


async def test_config_dump_and_clusters_are_json(base: str, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{base}/config_dump") as r:
        assert r.status == 200 and r.content_type == "application/json"
        assert (await r.json())["version_hash"] == "abc123"
    async with client.get(f"{base}/clusters") as r:
        assert r.status == 200
        assert (await r.json())["c"]["endpoints"][0]["address"] == "10.0.0.1:80"
    code, ctype, body = await curl(f"{base}/clusters")
    assert code == 200 and ctype.startswith("application/json")
    assert json.loads(body)["c"]["endpoints"][0]["healthy"] is True


async def test_shutdown_from_loopback(base: str, client: aiohttp.ClientSession, source: FakeSource) -> None:
    async with client.post(f"{base}/shutdown") as r:
        assert r.status == 200
    assert source.shutdowns == 1
    code, _, _ = await curl("-X", "POST", f"{base}/shutdown")
    assert code == 200 and source.shutdowns == 2


async def test_logging_get_and_set(base: str, client: aiohttp.ClientSession, source: FakeSource) -> None:
    async with client.get(f"{base}/logging") as r:
        assert await r.json() == {"level": "info"}
    async with client.post(f"{base}/logging", params={"level": "debug"}) as r:
        assert r.status == 200 and await r.json() == {"level": "debug"}
    assert source.level == "debug"
    code, _, body = await curl("-X", "POST", f"{base}/logging?level=warning")
    assert code == 200 and json.loads(body) == {"level": "warning"}
    assert source.level == "warning"
    code, _, body = await curl(f"{base}/logging")
    assert json.loads(body) == {"level": "warning"}


@pytest.mark.parametrize("query", ["?level=verbose", "?level=", ""])
async def test_bad_level_is_400(base: str, client: Client, source: FakeSource, query: str) -> None:
    async with client.post(f"{base}/logging{query}") as r:
        assert r.status == 400
    assert source.level == "info"


async def test_unknown_path_404_and_wrong_method_405(base: str, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{base}/nope") as r:
        assert r.status == 404
    async with client.get(f"{base}/shutdown") as r:
        assert r.status == 405
    async with client.post(f"{base}/ready") as r:
        assert r.status == 405
    assert (await curl(f"{base}/nope"))[0] == 404
    assert (await curl("-X", "DELETE", f"{base}/live"))[0] == 405


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("GET", "/ready", "ready"),
        ("GET", "/metrics", "metrics"),
        ("GET", "/config_dump", "config_dump"),
        ("GET", "/clusters", "clusters"),
        ("GET", "/logging", "log_level"),
        ("POST", "/logging?level=error", "set_log_level"),
    ],
)
async def test_failing_source_gives_500_without_traceback(
    base: str, client: aiohttp.ClientSession, source: FakeSource, method: str, path: str, what: str
) -> None:
    source.fail.add(what)
    async with client.request(method, f"{base}{path}") as r:
        assert r.status == 500
        body = await r.text()
    assert "Traceback" not in body and "exploded" not in body and "RuntimeError" not in body
    assert len(body) < 200
    # The server is still healthy afterwards.
    async with client.get(f"{base}/live") as r:
        assert r.status == 200


async def test_failing_shutdown_still_answers(base: str, client: Client, source: FakeSource) -> None:
    source.fail.add("request_shutdown")
    async with client.post(f"{base}/shutdown") as r:
        assert r.status == 200


def non_loopback_ipv4() -> str | None:
    candidates = []
    with contextlib.suppress(OSError):
        candidates.append(socket.gethostbyname(socket.gethostname()))
    try:
        # UDP connect sends nothing; it only asks the kernel which source address it would use.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            candidates.append(s.getsockname()[0])
    except OSError:
        pass
    for c in candidates:
        if not ipaddress.ip_address(c).is_loopback and not ipaddress.ip_address(c).is_unspecified:
            return c
    return None


async def test_state_changes_refused_from_non_loopback(source: FakeSource, client: Client) -> None:
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    server = AdminServer(source, "0.0.0.0", 0)
    port = await server.start()
    try:
        base = f"http://{ip}:{port}"
        async with client.post(f"{base}/shutdown") as r:
            assert r.status == 403
        async with client.post(f"{base}/logging", params={"level": "debug"}) as r:
            assert r.status == 403
        assert (await curl("-X", "POST", f"{base}/shutdown"))[0] == 403
        assert source.shutdowns == 0 and source.level == "info"
        # Reading is allowed from anywhere; only changes are loopback-only.
        async with client.get(f"{base}/logging") as r:
            assert r.status == 200
        # ... and the same server still obeys a loopback client.
        async with client.post(f"http://127.0.0.1:{port}/shutdown") as r:
            assert r.status == 200
        assert source.shutdowns == 1
    finally:
        await server.stop()


async def test_forwarded_header_does_not_grant_or_deny(base: str, client: aiohttp.ClientSession) -> None:
    # Loopback is judged from the socket's peer, not from headers a client can write.
    headers = {"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9"}
    async with client.post(f"{base}/logging", params={"level": "debug"}, headers=headers) as r:
        assert r.status == 200


async def test_start_stop_and_port_in_use(source: FakeSource) -> None:
    first = AdminServer(source, "127.0.0.1", 0)
    port = await first.start()
    try:
        with pytest.raises(OSError):
            await AdminServer(source, "127.0.0.1", port).start()
        with pytest.raises(RuntimeError):
            await first.start()
    finally:
        await first.stop()
    await first.stop()  # idempotent
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


# --- browsers: DNS rebinding (Host) and cross-site state changes (Origin) ----------------------------------


async def raw_status(base: str, request: bytes) -> int:
    """Send `request` as written (curl and aiohttp both normalise Host) and return the response status."""
    host, _, port = base.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        # Connection: close, so that the server has no connection left to wait for when the test stops it.
        writer.write(request.replace(b"\r\n", b"\r\nConnection: close\r\n", 1))
        status_line = await asyncio.wait_for(reader.readline(), 5)
        await reader.read()
    finally:
        writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize("host", [
    b"127.0.0.1:15000", b"10.1.2.3", b"[::1]:15000", b"[::1]", b"localhost", b"localhost:15000", b"LOCALHOST",
    b"localhost.:15000",
])
async def test_localhost_and_ip_literals_pass_the_host_guard(base: str, host: bytes) -> None:
    for path in (b"/metrics", b"/ready", b"/config_dump", b"/live"):
        assert await raw_status(base, b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n") == 200


@pytest.mark.parametrize(("host", "status"), [
    (b"evil.example", 403), (b"evil.example:15000", 403), (b"EVIL.example.", 403), (b"sub.localhost", 403),
    (b"localhost.evil.example", 403), (b"127.0.0.1.nip.io", 403), (b"127.1", 403),
    # Not a valid authority at all: the codec refuses these before the guard (400, connection closed).
    (b"::1", 400), (b"[evil.example]:15000", 400), (b"localhost:http", 400),
])
async def test_dns_names_fail_the_host_guard_on_every_path(base: str, source: FakeSource, host: bytes,
                                                           status: int) -> None:
    for method, path in ((b"GET", b"/metrics"), (b"GET", b"/ready"), (b"GET", b"/config_dump"), (b"GET", b"/live"),
                         (b"GET", b"/nope"), (b"POST", b"/shutdown"), (b"POST", b"/logging?level=debug")):
        request = method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 0\r\n\r\n"
        assert await raw_status(base, request) == status, (method, path)
    assert source.shutdowns == 0 and source.level == "info"


async def test_host_guard_reads_the_absolute_form_authority_and_lets_http10_without_host_pass(base: str) -> None:
    # An absolute-form target's authority replaces Host (RFC 9112 3.2.2), so it is what the guard judges.
    assert await raw_status(base, b"GET http://evil.example/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 403
    assert await raw_status(base, b"GET http://127.0.0.1/ready HTTP/1.1\r\nHost: evil.example\r\n\r\n") == 200
    # HTTP/1.0 without Host names nothing to rebind (browsers always send Host); HTTP/1.1 without one is a 400.
    assert await raw_status(base, b"GET /ready HTTP/1.0\r\n\r\n") == 200
    assert await raw_status(base, b"GET /ready HTTP/1.1\r\n\r\n") == 400


async def test_refused_host_answers_why(base: str, client: Client) -> None:
    async with client.get(f"{base}/ready", headers={"Host": "evil.example:15000"}) as r:
        assert r.status == 403 and "DNS" in await r.text()


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:15000", "null"])
async def test_state_changes_with_an_origin_are_refused(base: str, client: Client, source: FakeSource,
                                                        origin: str) -> None:
    headers = {"Origin": origin}
    async with client.post(f"{base}/logging", params={"level": "debug"}, headers=headers) as r:
        assert r.status == 403 and "Origin" in await r.text()
    async with client.post(f"{base}/shutdown", headers=headers) as r:
        assert r.status == 403
    assert source.level == "info" and source.shutdowns == 0
    # Reading with an Origin is harmless (a cross-site page cannot read the answer without CORS headers).
    async with client.get(f"{base}/logging", headers=headers) as r:
        assert r.status == 200
    assert (await curl("-X", "POST", "-H", f"Origin: {origin}", f"{base}/shutdown"))[0] == 403
    assert source.shutdowns == 0
