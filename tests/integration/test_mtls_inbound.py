"""mTLS termination on a listener, end to end, with real clients: Python's ssl, curl and openssl s_client.

CONTRACT.md: a listener with `tls:` serves TLS (1.2 and 1.3 only); with `require_client_cert` a caller
without a certificate from `ca` is refused; the caller's verified identity reaches the application in
`x-forwarded-client-cert` (`By=<own SPIFFE ID>;Hash=<sha256 of the peer cert>;URI=<peer SPIFFE ID>`), any
copy the client sent removed (on every listener); failed handshakes are counted by reason in
`sidecar_tls_handshake_errors_total{listener,reason}`; certificate files are re-read when they change on
disk (rename or Kubernetes symlink swap), new handshakes use the new material with no request failing, a
bad pair is refused and the old one kept (`sidecar_tls_reloads_total{result="failure"}`);
`match.peer_identity` routes by the caller's identity and `rate_limit.key: peer_identity` gives each caller
its own bucket. Every test runs on uvloop (what ships) and on the default asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.app import App
from proxy.config.load import load_config
from proxy.security.tls import client_context, peer_identity
from tests.conftest import RunningSidecar
from tests.integration.admin_client import metric
from tests.integration.upstreams import Upstream, start_upstream
from tests.pki import Pki, spiffe

SERVER_ID = spiffe("payment")
WEB_ID = spiffe("web")
BATCH_ID = spiffe("batch")
XFCC = "x-forwarded-client-cert"
HANDSHAKE_ERRORS = "sidecar_tls_handshake_errors_total"
RELOADS = "sidecar_tls_reloads_total"
TIMEOUT = aiohttp.ClientTimeout(total=5)


# The `pytest_asyncio_loop_factories` hook that replaces this fixture would parametrize every test under its
# conftest; both loops matter here only, where the TLS protocols (uvloop's and asyncio's) differ in ordering.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture is deprecated')


@pytest.fixture(params=["uvloop", "asyncio"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "pki")
    pki.leaf("server", SERVER_ID, dns_names=["localhost"])
    pki.leaf("web", WEB_ID)
    pki.leaf("batch", BATCH_ID)
    return pki


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await start_upstream(name="app")
    yield server
    await server.stop()


Start = Callable[..., Awaitable[RunningSidecar]]


@pytest.fixture
async def start(tmp_path: Path, pki: Pki, upstream: Upstream) -> AsyncIterator[Start]:
    """Start a sidecar with an mTLS listener `inbound` (its `tls:` and routes replaceable) and a plain
    listener `outbound`, both to the echo upstream; TLS files are polled every 50 ms."""
    apps: list[App] = []

    async def run(tls: str | None = None, routes: str | None = None, http: str = "{header_read_timeout: 10s}",
                  **write: Any) -> RunningSidecar:
        path = tmp_path / "sidecar.yaml"
        path.write_text(config(pki, upstream, tls, routes, http))
        app = App(load_config(path))
        app.tls_poll_interval = 0.05
        await app.start()
        apps.append(app)
        return RunningSidecar(app)

    yield run
    for app in apps:
        if not app.stopped.is_set():
            await app.drain_and_stop()


def mtls(pki: Pki, cert: str | None = None, key: str | None = None) -> str:
    cert = cert or str(pki.root / "server.pem")
    key = key or str(pki.root / "server-key.pem")
    return f"{{cert: {cert}, key: {key}, ca: {pki.ca}, require_client_cert: true}}"


def config(pki: Pki, upstream: Upstream, tls: str | None, routes: str | None, http: str) -> str:
    routes = routes or """
          - name: app
            match: {prefix: /}
            cluster: app"""
    return textwrap.dedent(f"""
        admin: {{address: "127.0.0.1:0"}}
        listeners:
          - name: inbound
            address: "127.0.0.1:0"
            http: {http}
            tls: {tls or mtls(pki)}
            routes:{textwrap.indent(textwrap.dedent(routes), "              ")}
          - name: outbound
            address: "127.0.0.1:0"
            routes:
              - name: app
                match: {{prefix: /}}
                cluster: app
        clusters:
          - name: app
            endpoints: ["{upstream.address}"]
        """)


def client(pki: Pki, name: str | None) -> ssl.SSLContext:
    """A client as another sidecar is one: its certificate (None: none), our CA, no hostname check."""
    if name is None:
        return client_context(None, None, pki.ca, [])
    return client_context(str(pki.root / f"{name}.pem"), str(pki.root / f"{name}-key.pem"), pki.ca, [])


async def get(running: RunningSidecar, context: ssl.SSLContext, path: str = "/",
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session, \
            session.get(f"https://127.0.0.1:{running.port('inbound')}{path}", headers=headers) as reply:
        body = await reply.json() if reply.content_type == "application/json" else await reply.read()
        return reply.status, body


def sha256_of(cert_path: str) -> str:
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def errors_reach(running: RunningSidecar, reason: str, count: float) -> None:
    async def reached() -> bool:
        return await metric(running, HANDSHAKE_ERRORS, listener="inbound", reason=reason) >= count
    await eventually(reached)


async def run_tool(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin), 15)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# -- identity to the application ----------------------------------------------------------------------


async def test_the_app_sees_the_callers_verified_identity_and_never_a_forged_one(start: Start, pki: Pki) -> None:
    running = await start()
    status, echoed = await get(running, client(pki, "web"), headers={XFCC: f"URI={spiffe('admin')}"})
    assert status == 200
    headers = echoed["headers"]
    assert headers[XFCC] == f"By={SERVER_ID};Hash={sha256_of(str(pki.root / 'web.pem'))};URI={WEB_ID}"
    assert headers["x-forwarded-proto"] == "https"
    # The plain listener removes a client's copy too.
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
            session.get(running.url("/", "outbound"), headers={XFCC: f"URI={spiffe('admin')}"}) as reply:
        assert XFCC not in (await reply.json())["headers"]


async def test_a_tls_listener_without_client_certificates_vouches_for_nobody(start: Start, pki: Pki) -> None:
    server = pki.root / "server"
    running = await start(tls=f"{{cert: {server}.pem, key: {server}-key.pem}}")
    status, echoed = await get(running, client(pki, None), headers={XFCC: "URI=forged"})
    assert status == 200
    assert XFCC not in echoed["headers"] and echoed["headers"]["x-forwarded-proto"] == "https"


async def test_curl_with_a_client_certificate_gets_through_and_without_one_does_not(start: Start, pki: Pki) -> None:
    running = await start()
    port = running.port("inbound")
    base = ["curl", "-sS", "--max-time", "5", "--cacert", pki.ca, "--resolve", f"localhost:{port}:127.0.0.1"]
    url = f"https://localhost:{port}/hi"
    code, out, err = await run_tool(*base, "--cert", str(pki.root / "web.pem"), "--key",
                                    str(pki.root / "web-key.pem"), "-H", f"{XFCC}: forged", url)
    assert code == 0, err
    assert f"URI={WEB_ID}" in out and "forged" not in out
    code, out, err = await run_tool(*base, url)
    assert code != 0 and "hi" not in out
    await errors_reach(running, "no_client_cert", 1)


# -- protocol versions and refusals -------------------------------------------------------------------


async def test_openssl_negotiates_tls13_and_is_refused_tls10_and_tls11(start: Start, pki: Pki) -> None:
    running = await start()
    connect = ["openssl", "s_client", "-connect", f"127.0.0.1:{running.port('inbound')}"]
    client_cert = ["-cert", str(pki.root / "web.pem"), "-key", str(pki.root / "web-key.pem"), "-CAfile", pki.ca]
    code, out, _ = await run_tool(*connect, "-tls1_3", *client_cert, stdin=b"")
    assert code == 0 and "New, TLSv1.3, Cipher is TLS_" in out and "Verify return code: 0 (ok)" in out
    code, out, _ = await run_tool(*connect, "-tls1_2", *client_cert, stdin=b"")
    assert code == 0
    assert re.search(r"New, TLSv1\.2, Cipher is ECDHE-ECDSA-(AES256-GCM-SHA384|AES128-GCM-SHA256|CHACHA20-POLY1305)",
                     out)
    for old in ("-tls1", "-tls1_1"):
        # SECLEVEL=0: this OpenSSL would not even offer TLS 1.0/1.1 otherwise; the sidecar must refuse them.
        code, out, _ = await run_tool(*connect, old, "-cipher", "DEFAULT@SECLEVEL=0", *client_cert, stdin=b"")
        assert code != 0 and "New, TLSv1" not in out
    await errors_reach(running, "protocol_version", 2)


async def test_handshake_failures_are_counted_by_reason_and_disturb_no_one(start: Start, pki: Pki) -> None:
    running = await start(http="{header_read_timeout: 400ms}")
    port = running.port("inbound")
    # A caller mid-conversation on a keep-alive connection, before and after every failure below.
    connector = aiohttp.TCPConnector(ssl=client(pki, "web"), limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as steady:
        async def still_served() -> None:
            async with steady.get(f"https://127.0.0.1:{port}/steady") as reply:
                assert reply.status == 200
        await still_served()
        failures: list[tuple[str, Callable[[], Awaitable[None]]]] = []

        async def refused(context: ssl.SSLContext) -> None:
            # One connection (aiohttp would try a refused TLS 1.3 request twice): the handshake may look done
            # to the client before the server judged its certificate, so the refusal shows on the first read.
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
                writer.write(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
                assert await asyncio.wait_for(reader.read(), 3) == b""
                writer.close()
            except (ssl.SSLError, ConnectionError):
                pass

        stranger = pki.foreign("stranger", WEB_ID)
        old = pki.expired("old", WEB_ID)
        failures.append(("no_client_cert", lambda: refused(client(pki, None))))
        failures.append(("unknown_ca", lambda: refused(client_context(*stranger, pki.ca, []))))
        failures.append(("expired", lambda: refused(client_context(*old, pki.ca, []))))

        async def plain_http() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), 3)
            writer.close()

        async def silent() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            began = time.monotonic()
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            assert 0.3 < time.monotonic() - began < 3  # closed after header_read_timeout
            writer.close()

        async def hang_up() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.transport.abort()

        failures += [("not_tls", plain_http), ("handshake_timeout", silent), ("peer_closed", hang_up)]
        for reason, fail in failures:
            await fail()
            await errors_reach(running, reason, 1)
            await still_served()
    assert await metric(running, HANDSHAKE_ERRORS, listener="inbound") == len(failures)
    assert await metric(running, "sidecar_downstream_connections", listener="inbound") == 0


# -- identity in routes and rate limits ----------------------------------------------------------------


ROUTES_BY_IDENTITY = f"""
    - name: batch
      match: {{prefix: /, peer_identity: {{exact: "{BATCH_ID}"}}}}
      cluster: app
      headers: {{request: {{set: {{x-route: batch}}}}}}
    - name: shop
      match: {{prefix: /, peer_identity: {{prefix: "spiffe://cluster.local/ns/shop/"}}}}
      cluster: app
      headers: {{request: {{set: {{x-route: shop}}}}}}
      rate_limit: {{requests_per_second: 0.01, burst: 2, key: peer_identity}}
"""


async def test_routes_and_rate_limits_follow_the_callers_identity(start: Start, pki: Pki) -> None:
    running = await start(routes=ROUTES_BY_IDENTITY)
    pki.leaf("cart", spiffe("cart"))
    pki.leaf("intruder", spiffe("intruder", namespace="other"))
    for _ in range(3):
        status, echoed = await get(running, client(pki, "batch"))
        assert status == 200 and echoed["headers"]["x-route"] == "batch"  # batch's route has no limit
    for name in ("web", "cart"):
        for _ in range(2):
            status, echoed = await get(running, client(pki, name))
            assert status == 200 and echoed["headers"]["x-route"] == "shop"
        status, _ = await get(running, client(pki, name))
        assert status == 429  # each caller's own bucket of 2 is empty now
    status, _ = await get(running, client(pki, "intruder"))
    assert status == 404  # a verified caller that no route admits
    assert await metric(running, "sidecar_rate_limited_total", listener="inbound", route="shop") == 2


# -- rotation ------------------------------------------------------------------------------------------


class Traffic:
    """Requests in a loop while certificates rotate: new connections (a handshake each) from several
    callers, and one keep-alive connection opened before the rotation. Records every failure and the server
    identity each new connection saw."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.failures: list[str] = []
        self.seen: list[str] = []
        self.kept_alive = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, new_connections: int = 4) -> None:
        self._tasks = [asyncio.create_task(self._new_connections()) for _ in range(new_connections)]
        self._tasks.append(asyncio.create_task(self._keep_alive()))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _new_connections(self) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.context)
                self.seen.append(peer_identity(writer.get_extra_info("ssl_object")))
                writer.write(b"GET /loop HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                if not answer.startswith(b"HTTP/1.1 200 "):
                    self.failures.append(answer[:60].decode(errors="replace"))
            except (OSError, TimeoutError) as exc:
                self.failures.append(repr(exc))

    async def _keep_alive(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.context, limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
            while not self._stop.is_set():
                try:
                    async with session.get(f"https://127.0.0.1:{self.port}/kept") as reply:
                        await reply.read()
                        if reply.status != 200:
                            self.failures.append(f"keep-alive {reply.status}")
                        self.kept_alive += 1
                except aiohttp.ClientError as exc:
                    self.failures.append(repr(exc))
                await asyncio.sleep(0.005)


@pytest.mark.parametrize("how", ["rename", "symlink swap"])
async def test_rotation_under_load_fails_no_request(start: Start, pki: Pki, tmp_path: Path, how: str) -> None:
    mount = tmp_path / "secret"
    if how == "rename":
        running = await start()
    else:
        running = await start(tls=mtls(pki, *pki.mounted(mount, "server", "v1")))
    traffic = Traffic(running.port("inbound"), client(pki, "web"))
    traffic.start()
    await asyncio.sleep(0.2)
    rotated = spiffe("payment-v2")
    pki.leaf("server", rotated, dns_names=["localhost"])  # by rename: `certs issue` writes atomically
    if how == "symlink swap":
        pki.mounted(mount, "server", "v2")

    async def new_handshakes_see_it() -> bool:
        return rotated in traffic.seen[-3:]
    await eventually(new_handshakes_see_it)
    await asyncio.sleep(0.2)
    await traffic.stop()
    assert traffic.failures == []
    assert SERVER_ID in traffic.seen and traffic.seen[-1] == rotated
    assert traffic.kept_alive > 10
    assert await metric(running, RELOADS, result="success") == 1
    assert await metric(running, RELOADS, result="failure") == 0


async def test_bad_material_is_refused_and_the_old_kept(start: Start, pki: Pki) -> None:
    running = await start()
    cert = pki.root / "server.pem"
    good = cert.read_bytes()
    cert.write_bytes(good[: len(good) // 2])  # half-written

    async def refused(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await metric(running, RELOADS, result="failure") >= count
        return check
    await eventually(await refused(1))
    cert.write_bytes((pki.root / "web.pem").read_bytes())  # a certificate that does not match the key
    await eventually(await refused(2))
    status, echoed = await get(running, client(pki, "web"))
    assert status == 200 and f"By={SERVER_ID};" in echoed["headers"][XFCC]
    # The key catches up (a new pair written file by file): the next poll takes it.
    pki.leaf("server", spiffe("payment-v3"), dns_names=["localhost"])

    async def reloaded() -> bool:
        return await metric(running, RELOADS, result="success") == 1
    await eventually(reloaded)
    status, echoed = await get(running, client(pki, "web"))
    assert status == 200 and f"By={spiffe('payment-v3')};" in echoed["headers"][XFCC]
    assert await metric(running, RELOADS, result="failure") == 2


async def test_a_config_reload_swaps_a_listeners_files_without_rebinding(start: Start, pki: Pki,
                                                                         tmp_path: Path) -> None:
    running = await start()
    port = running.port("inbound")
    cert, key = pki.leaf("server-b", spiffe("payment-b"))
    path = tmp_path / "sidecar.yaml"
    path.write_text(path.read_text().replace(str(pki.root / "server.pem"), cert).replace(
        str(pki.root / "server-key.pem"), key))
    assert await running.app.reload()
    assert running.port("inbound") == port
    status, echoed = await get(running, client(pki, "web"))
    assert status == 200 and echoed["headers"][XFCC].startswith(f"By={spiffe('payment-b')};")
    # Files that cannot be loaded refuse the reload; the listener keeps serving what it had.
    path.write_text(path.read_text().replace(key, str(pki.root / "web-key.pem")))
    assert not await running.app.reload()
    assert await metric(running, "sidecar_config_reloads_total", result="failure") == 1
    status, echoed = await get(running, client(pki, "web"))
    assert status == 200 and echoed["headers"][XFCC].startswith(f"By={spiffe('payment-b')};")
