"""The two-sidecar mesh example, config/mesh-a.yaml and config/mesh-b.yaml, run as written.

app A -> sidecar A's outbound listener -> mTLS -> sidecar B's inbound listener -> app B. The two files are
copied beside a `certs/dev` made as certs/README.md says, with only their ports changed to free ones, and run
as real `python -m proxy run -c ...` processes. App B sees who called (payment-service) and who answered
(campaign-service) in `x-forwarded-client-cert`; a caller with another identity from the same CA is refused by
sidecar B's `authz` (403); a sidecar A that expects another identity refuses sidecar B (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import free_port
from tests.pki import DEV_IDS, dev_certs

REPO = Path(__file__).resolve().parents[2]
XFCC = "x-forwarded-client-cert"
TIMEOUT = aiohttp.ClientTimeout(total=5)
ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")


def mesh_copy(root: Path) -> tuple[Path, Path, dict[int, int]]:
    """config/mesh-{a,b}.yaml in `root/config` beside `root/certs/dev`, every port replaced by a free one (the
    same port in both files gets the same free port). Returns both paths and the port map."""
    (root / "config").mkdir()
    texts = {name: (REPO / "config" / name).read_text() for name in ("mesh-a.yaml", "mesh-b.yaml")}
    ports = {int(port): free_port() for text in texts.values() for port in ADDRESS.findall(text)}
    for name, text in texts.items():
        (root / "config" / name).write_text(ADDRESS.sub(lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text))
    return root / "config" / "mesh-a.yaml", root / "config" / "mesh-b.yaml", ports


class Sidecar:
    """`python -m proxy run -c PATH` in a process of its own; stderr kept (and read, so it never blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Sidecar:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "run", "-c", str(self.path), cwd=REPO, stderr=asyncio.subprocess.PIPE)
        assert self.process.stderr is not None
        first = (await asyncio.wait_for(self.process.stderr.readline(), 15)).decode()
        assert "listening:" in first, first + (await self.process.stderr.read()).decode()
        self.log.append(first)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            self.log.append(line.decode())

    async def stop(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        if self._reader is not None:
            await self._reader
        return code


@contextlib.asynccontextmanager
async def app_b(port: int) -> AsyncIterator[list[dict[str, str]]]:
    """The callee's application: answers every request with the headers it got, and keeps them."""
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen.append(headers)
        return web.json_response({"service": "campaign-service", "path": request.path, "headers": headers})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield seen
    finally:
        await runner.cleanup()


async def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], Any]:
    connector = aiohttp.TCPConnector(ssl=context) if context else None
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session, session.get(url) as reply:
        body = await reply.json() if reply.content_type == "application/json" else await reply.text()
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, body


def der_sha256(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class Mesh:
    """The example's files in a tmp dir (`certs`, `ports`: the example's port -> the free one used), app B
    running (`seen`: the headers of each request it got), and the sidecars a test starts with `run`."""

    def __init__(self, root: Path) -> None:
        self.certs = dev_certs(root)
        mesh_a, mesh_b, self.ports = mesh_copy(root)
        self.seen: list[dict[str, str]] = []
        # Also a sidecar A whose cluster expects another service than the one sidecar B proves it is, on
        # admin and outbound ports of its own.
        text = mesh_a.read_text()
        expected = "expect_identity: spiffe://cluster.local/ns/default/sa/campaign-service"
        assert expected in text
        text = text.replace(expected, "expect_identity: spiffe://cluster.local/ns/default/sa/billing-service")
        own = {self.ports[15000]: free_port(), self.ports[15001]: free_port()}
        self.wrong_port = own[self.ports[15001]]
        wrong = root / "config" / "mesh-a-expects-billing.yaml"
        wrong.write_text(ADDRESS.sub(lambda m: f"127.0.0.1:{own.get(int(m.group(1)), int(m.group(1)))}", text))
        self.paths = {"a": mesh_a, "b": mesh_b, "a-expects-billing": wrong}
        self.sidecars: list[Sidecar] = []

    async def run(self, *names: str) -> None:
        started = [Sidecar(self.paths[name]) for name in names]
        self.sidecars += started
        await asyncio.gather(*(sidecar.start() for sidecar in started))

    async def stop(self) -> None:
        codes = await asyncio.gather(*(sidecar.stop() for sidecar in self.sidecars))
        assert codes == [0] * len(codes), [s.log for s in self.sidecars]  # each drained and exited on SIGTERM


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(tmp_path)
    async with app_b(mesh.ports[8081]) as mesh.seen:
        try:
            yield mesh
        finally:
            await mesh.stop()


async def test_app_b_learns_the_callers_identity_through_both_sidecars(mesh: Mesh) -> None:
    await mesh.run("b", "a")
    status, _, body = await get(f"http://127.0.0.1:{mesh.ports[15001]}/api/v1/campaigns")
    assert status == 200, body
    assert body["path"] == "/api/v1/campaigns"
    assert body["headers"][XFCC] == (
        f"By={DEV_IDS['campaign-service']};Hash={der_sha256(mesh.certs / 'payment-service.pem')};"
        f"URI={DEV_IDS['payment-service']}")


async def test_sidecar_b_refuses_a_caller_whose_identity_is_not_allowed(mesh: Mesh) -> None:
    await mesh.run("b")
    certs, inbound = mesh.certs, f"https://127.0.0.1:{mesh.ports[15443]}/api/v1/campaigns"
    # The intruder calls sidecar B directly, as a sidecar would: a certificate from the mesh's CA, the CA to
    # verify sidecar B's chain, no hostname (sidecar B's certificate names a SPIFFE ID, not 127.0.0.1).
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(certs / "intruder.pem", certs / "intruder-key.pem")
    status, headers, _ = await get(inbound, context)
    assert status == 403
    assert headers["proxy-status"] == (
        'sidecar; error=http_request_denied; details="route to-campaign-app: peer identity not allowed"')
    assert mesh.seen == []  # app B never heard of it
    # payment-service's certificate, the same way, is let in.
    context.load_cert_chain(certs / "payment-service.pem", certs / "payment-service-key.pem")
    status, _, body = await get(inbound, context)
    assert status == 200 and body["headers"][XFCC].endswith(f";URI={DEV_IDS['payment-service']}")


async def test_sidecar_a_refuses_an_upstream_that_is_not_who_it_expects(mesh: Mesh) -> None:
    await mesh.run("b", "a-expects-billing")
    status, headers, _ = await get(f"http://127.0.0.1:{mesh.wrong_port}/api/v1/campaigns")
    assert status == 503
    assert headers["proxy-status"] == (
        f'sidecar; error=connection_refused; details="cluster campaign-service: endpoint '
        f'127.0.0.1:{mesh.ports[15443]}: upstream identity {DEV_IDS["campaign-service"]} is not the expected '
        'spiffe://cluster.local/ns/default/sa/billing-service"')
    assert mesh.seen == []  # refused before any request was written
