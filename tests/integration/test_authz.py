"""Route `authz` and `api_key` end to end, through real sockets: a missing or wrong API key is a 401 that
never reaches the upstream, a right one is proxied; a keys file edited on disk takes effect without a
restart (in every worker), a bad edit keeps the old keys; a route with `authz` on a plain listener (no
verified identity) answers 403; keys never show in /config_dump or in `validate`'s output.

CONTRACT.md "Local replies": authz denied 403 `http_request_denied`; API key missing or unknown 401
`http_request_denied` (details: api key). The mTLS case (an allowed identity reaching the upstream) comes
with TLS termination."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port
from tests.integration.admin_client import admin_json, metric
from tests.integration.raw import RawUpstream, outbound_config

REPO = Path(__file__).resolve().parents[2]
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)
KEY = "k-7f3a9c-campaign"
NEW_KEY = "k-0b12de-rotated"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def replace(path: Path, text: str) -> None:
    """A new version of a file, written whole and renamed over the old one (as Kubernetes swaps a Secret)."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys.yaml"
    path.write_text(f"# service-to-service keys\n{sha(KEY)}: campaign-service\n")
    return path


@pytest.fixture
async def upstream() -> AsyncIterator[RawUpstream]:
    server = await RawUpstream().start()
    yield server
    await server.stop()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, \
            session.get(url, headers=headers) as reply:
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, await reply.read()


async def curl(url: str, *args: str) -> tuple[int, str]:
    """curl in a subprocess, without blocking the loop the sidecar runs on: (status, response head)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-D", "-", "-o", "/dev/null", "--max-time", "5", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    head = out.decode("latin-1")
    return int(head.split()[1]), head.lower()


async def eventually(condition_url: str, headers: dict[str, str], status: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got, _, _ = await get(condition_url, headers)
        if got == status:
            return
        assert time.monotonic() < deadline, f"still {got}, not {status}"
        await asyncio.sleep(0.1)


def api_key_route(keys_file: Path) -> str:
    return f"api_key: {{header: x-api-key, keys_file: {keys_file.name}}}"


async def test_without_a_key_or_with_a_wrong_one_the_answer_is_401_and_nothing_goes_upstream(
        sidecar, upstream: RawUpstream, keys_file: Path) -> None:  # type: ignore[no-untyped-def]
    running = await sidecar(outbound_config(upstream.address, route_extra=api_key_route(keys_file)))
    status, head = await curl(running.url("/orders"))
    assert status == 401
    assert 'proxy-status: sidecar; error=http_request_denied; details="route all: api key missing (x-api-key)"' in head
    assert 'www-authenticate: apikey header="x-api-key"' in head
    status, head = await curl(running.url("/orders"), "-H", "x-api-key: k-guessed")
    assert status == 401 and 'details="route all: api key unknown"' in head
    status, _, body = await get(running.url("/orders"), {"x-api-key": sha(KEY)})  # the digest is not the key
    assert status == 401 and b"api key unknown" in body
    assert upstream.requests == []
    assert await metric(running, "sidecar_requests_total", route="all", cluster="", code="401") == 3


async def test_with_the_right_key_the_upstream_gets_the_request(
        sidecar, upstream: RawUpstream, keys_file: Path) -> None:  # type: ignore[no-untyped-def]
    running = await sidecar(outbound_config(upstream.address, route_extra=api_key_route(keys_file)))
    status, _, body = await get(running.url("/orders?x=1"), {"x-api-key": KEY})
    assert (status, body) == (200, b"ok:/orders?x=1")
    status, _ = await curl(running.url("/curl"), "-H", f"X-Api-Key: {KEY}")
    assert status == 200
    assert [request.target for request in upstream.requests] == [b"/orders?x=1", b"/curl"]
    assert upstream.requests[0].header(b"x-api-key") == KEY.encode()


async def test_a_header_rule_can_keep_the_key_from_the_upstream(
        sidecar, upstream: RawUpstream, keys_file: Path) -> None:  # type: ignore[no-untyped-def]
    route = api_key_route(keys_file) + "\n            headers: {request: {remove: [x-api-key]}}"
    running = await sidecar(outbound_config(upstream.address, route_extra=route))
    status, _, _ = await get(running.url("/"), {"x-api-key": KEY})
    assert status == 200 and upstream.requests[0].header(b"x-api-key") is None


async def test_a_keys_file_edited_on_disk_takes_effect_without_a_restart(
        sidecar, upstream: RawUpstream, keys_file: Path,  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture) -> None:
    running = await sidecar(outbound_config(upstream.address, route_extra=api_key_route(keys_file)))
    assert (await get(running.url("/"), {"x-api-key": KEY}))[0] == 200
    assert (await get(running.url("/"), {"x-api-key": NEW_KEY}))[0] == 401
    # Rotation: the new key is added, then the old one removed (a rename, then an edit in place).
    replace(keys_file, f"{sha(KEY)}: campaign-service\n{sha(NEW_KEY)}: campaign-service\n")
    await eventually(running.url("/"), {"x-api-key": NEW_KEY}, 200)
    assert (await get(running.url("/"), {"x-api-key": KEY}))[0] == 200
    keys_file.write_text(f"{sha(NEW_KEY)}: campaign-service\n")
    await eventually(running.url("/"), {"x-api-key": KEY}, 401)
    assert (await get(running.url("/"), {"x-api-key": NEW_KEY}))[0] == 200
    # A bad edit (a plain key pasted in) keeps the keys read before, and says so without the key.
    with caplog.at_level(logging.INFO, logger="proxy.filters.keysfile"):
        replace(keys_file, f"{sha(NEW_KEY)}: campaign-service\n{KEY}: oops\n")
        deadline = time.monotonic() + 5
        while "keeping the 1 key(s) read before" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.1)
    assert (await get(running.url("/"), {"x-api-key": NEW_KEY}))[0] == 200
    assert (await get(running.url("/"), {"x-api-key": KEY}))[0] == 401
    assert KEY not in caplog.text and sha(KEY) not in caplog.text and sha(NEW_KEY) not in caplog.text
    assert f"keys file {keys_file}:2: a key must be the SHA-256 digest" in caplog.text
    assert running.app.loaded.config.listeners[0].routes[0].api_key is not None  # no config reload was involved


async def test_a_route_with_authz_on_a_plain_listener_answers_403(
        sidecar, upstream: RawUpstream) -> None:  # type: ignore[no-untyped-def]
    authz = "authz: {allow_identities: [spiffe://cluster.local/ns/default/sa/*]}"
    running = await sidecar(outbound_config(upstream.address, route_extra=authz))
    status, head = await curl(running.url("/x"))
    assert status == 403
    assert 'proxy-status: sidecar; error=http_request_denied; details="route all: peer identity not allowed"' in head
    # A header claiming an identity changes nothing: only a verified certificate gives one.
    status, _, _ = await get(running.url("/x"), {"x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/default/sa/web"})
    assert status == 403
    assert upstream.requests == []
    assert await metric(running, "sidecar_requests_total", route="all", cluster="", code="403") == 2


async def test_config_dump_shows_the_rules_but_never_the_keys_file(
        sidecar, upstream: RawUpstream, keys_file: Path) -> None:  # type: ignore[no-untyped-def]
    route = (api_key_route(keys_file) + "\n            authz: {allow_identities: [spiffe://cluster.local/ns/a/sa/*],"
             " deny_identities: [spiffe://cluster.local/ns/a/sa/old]}")
    running = await sidecar(outbound_config(upstream.address, route_extra=route))
    dumped = await admin_json(running, "/config_dump")
    dumped_route = dumped["listeners"][0]["routes"][0]
    assert dumped_route["api_key"] == {"header": "x-api-key", "keys_file": "[redacted]"}
    assert dumped_route["authz"] == {"allow_identities": ["spiffe://cluster.local/ns/a/sa/*"],
                                     "deny_identities": ["spiffe://cluster.local/ns/a/sa/old"]}
    assert sha(KEY) not in str(dumped) and str(keys_file) not in str(dumped)


def test_validate_refuses_a_malformed_keys_file_by_file_line_and_key_path(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"{sha(KEY)}: campaign-service\n{KEY}: billing\n")
    path = tmp_path / "sidecar.yaml"
    path.write_text(outbound_config("127.0.0.1:9", route_extra=api_key_route(keys)))
    result = subprocess.run([sys.executable, "-m", "proxy", "validate", "-c", str(path)], capture_output=True,
                            text=True, timeout=30, cwd=REPO)
    assert result.returncode == 1
    line = next(number for number, text in enumerate(path.read_text().splitlines(), 1) if "keys_file" in text)
    assert (f"{path}:{line}: listeners[0].routes[0].api_key.keys_file: keys file {keys}:2: a key must be the"
            " SHA-256 digest of an API key") in result.stderr
    assert KEY not in result.stderr + result.stdout and sha(KEY) not in result.stderr + result.stdout


# --- workers ------------------------------------------------------------------------------------------------


async def statuses(url: str, key: str, count: int = 40) -> list[int]:
    """`count` GETs with `key`, each on a new connection (so the kernel spreads them over the workers)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:

        async def one() -> int:
            async with session.get(url, headers={"x-api-key": key, "Connection": "close"}) as reply:
                await reply.read()
                return reply.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_every_worker_takes_an_edited_keys_file(tmp_path: Path, upstream: RawUpstream,
                                                      keys_file: Path) -> None:
    admin, port = free_port(), free_port()
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"""
workers: 2
drain_timeout: 2s
admin: {{address: "127.0.0.1:{admin}"}}
listeners:
  - name: outbound
    address: "127.0.0.1:{port}"
    routes:
      - {{name: all, match: {{prefix: /}}, cluster: backend, {api_key_route(keys_file)}}}
clusters:
  - name: backend
    endpoints: ["{upstream.address}"]
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(path)], cwd=REPO,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 15
        while True:
            try:
                async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, \
                        session.get(f"http://127.0.0.1:{admin}/ready") as reply:
                    if reply.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the sidecar did not get ready"
            await asyncio.sleep(0.1)
        assert await statuses(url, KEY) == [200] * 40
        replace(keys_file, f"{sha(NEW_KEY)}: campaign-service\n")
        await asyncio.sleep(2.5)  # each worker polls once a second
        # Both workers serve these (40 connections spread by the kernel): a worker still on the old file
        # would answer about half of each with the wrong status.
        assert await statuses(url, NEW_KEY) == [200] * 40
        assert await statuses(url, KEY) == [401] * 40
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
