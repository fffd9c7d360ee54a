"""mTLS origination end to end: a sidecar cluster with `tls:` in front of real TLS upstreams (asyncio servers
whose contexts require a client certificate from the dev CA).

What the contract and the issue ask: the upstream sees the sidecar's client certificate (its SPIFFE ID) and
an ALPN offer of http/1.1; keep-alive connections are reused (one handshake for many requests) and a new one
resumes the endpoint's TLS session; an upstream with the wrong SPIFFE ID, or a certificate from another CA,
is refused as a connect failure (503 `connection_refused` with the reason, counted as `connect_failure`, and
seen so by retries and the breaker); a cluster without a client certificate fails against an upstream that
requires one; rotated client certificate files apply to new connections; the client certificate's expiry is
`sidecar_cert_expiry_timestamp_seconds{listener_or_cluster=<cluster>}`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.security.certs import spiffe_id_from_cert
from tests.integration.admin_client import admin_json, endpoint_view, metric
from tests.integration.raw import RawHandler, RawUpstream, outbound_config
from tests.integration.upstreams import start_upstream
from tests.pki import CLIENT_ID, OTHER_ID, UPSTREAM_ID, Pki, make_pki, upstream_context

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)
# On asyncio's loop and on uvloop, which the sidecar runs on (tests/conftest.py).
LOOPS = ("asyncio", "uvloop")


class TlsUpstream(RawUpstream):
    """A raw HTTP/1.1 upstream behind TLS; it records each connection's client identity, ALPN and resumption."""

    def __init__(self, context: ssl.SSLContext, handler: RawHandler | None = None) -> None:
        super().__init__(handler)
        self.context = context
        self.peers: list[tuple[str | None, str | None, bool]] = []

    async def start(self) -> TlsUpstream:
        self.server = await asyncio.start_server(self._serve_tls, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True)
        self.peers.append((spiffe_id_from_cert(der) if der else None, obj.selected_alpn_protocol(),
                           obj.session_reused))
        await self._serve(reader, writer)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(endpoints: str | list[str], pki: Pki, *, cert: str | None = "client",
               expect: str | None = UPSTREAM_ID, route_extra: str = "", cluster_extra: str = "") -> str:
    client = f"cert: {pki.cert(cert)}, key: {pki.key(cert)}, " if cert else ""
    identity = f", expect_identity: {expect}" if expect else ""
    return outbound_config(endpoints, route_extra=route_extra,
                           cluster_extra=f"tls: {{{client}ca: {pki.ca}{identity}}}\n        {cluster_extra}")


async def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, session.request(method, url) as reply:
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, await reply.read()


async def get_many(url: str, count: int) -> list[int]:
    """`count` sequential GETs on one keep-alive client connection."""
    statuses = []
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for _ in range(count):
            async with session.get(url) as reply:
                await reply.read()
                statuses.append(reply.status)
    return statuses


async def test_requests_reach_the_upstream_over_mtls_with_the_clients_identity(sidecar: Any, pki: Pki) -> None:
    upstream = await TlsUpstream(upstream_context(pki)).start()
    running = await sidecar(tls_config(upstream.address, pki))
    status, _, body = await get(running.url("/hello"))
    assert (status, body) == (200, b"ok:/hello")
    # The upstream verified the sidecar's certificate; the server prefers h2 and got http/1.1: all we offered.
    assert upstream.peers == [(CLIENT_ID, "http/1.1", False)]
    await upstream.stop()


async def test_keep_alive_reuses_one_tls_connection_and_a_new_one_resumes(sidecar: Any, pki: Pki) -> None:
    upstream = await TlsUpstream(upstream_context(pki)).start()
    running = await sidecar(tls_config(upstream.address, pki))
    assert await get_many(running.url("/n"), 30) == [200] * 30
    assert len(upstream.peers) == 1 and len(upstream.requests) == 30  # one handshake for thirty requests
    upstream.drop_connections()  # as an upstream restart (keeping its ticket keys) would
    await asyncio.sleep(0.05)
    assert await get_many(running.url("/n"), 1) == [200]
    assert [resumed for _, _, resumed in upstream.peers] == [False, True]
    view = await endpoint_view(running, upstream.address)
    assert view["tls"] == {"full_handshakes": 1, "resumed_handshakes": 1}
    await upstream.stop()


async def test_an_upstream_with_the_wrong_identity_is_refused(sidecar: Any, pki: Pki,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    impostor = await TlsUpstream(upstream_context(pki, "impostor")).start()
    running = await sidecar(tls_config(impostor.address, pki))
    status, headers, _ = await get(running.url("/x"))
    assert status == 503
    assert headers["proxy-status"] == (
        f'sidecar; error=connection_refused; details="cluster backend: endpoint {impostor.address}: '
        f'upstream identity {OTHER_ID} is not the expected {UPSTREAM_ID}"')
    assert impostor.requests == []  # the connection was closed before any request was written
    assert await metric(running, "sidecar_upstream_attempts_total", cluster="backend",
                        outcome="connect_failure") == 1
    refusals = [r for r in caplog.records if "is not the expected" in r.getMessage()]
    assert len(refusals) == 1
    await impostor.stop()


async def test_retries_and_the_breaker_see_a_refused_identity_as_a_connect_failure(sidecar: Any, pki: Pki) -> None:
    impostor = await TlsUpstream(upstream_context(pki, "impostor")).start()
    upstream = await TlsUpstream(upstream_context(pki)).start()
    running = await sidecar(tls_config(
        [impostor.address, upstream.address], pki,
        route_extra="retries: {attempts: 1, on: [connect-failure], backoff: {base: 1ms, max: 2ms}}",
        cluster_extra="circuit_breaker: {min_requests: 3, failure_ratio: 0.6, interval: 10s, open_timeout: 30s}"))
    # POST: retried only because a connect failure never reached the upstream.
    for _ in range(6):
        status, _, _ = await get(running.url("/p"), method="POST")
        assert status == 200
    assert len(upstream.requests) == 6 and impostor.requests == []
    failures = await metric(running, "sidecar_upstream_attempts_total", cluster="backend", outcome="connect_failure")
    assert failures == 3  # round robin sent three first tries to the impostor; then its breaker opened
    assert (await endpoint_view(running, impostor.address))["breaker"] == "open"
    assert await metric(running, "sidecar_retries_total", result="retried") == 3
    await impostor.stop()
    await upstream.stop()


async def test_an_upstream_certificate_from_another_ca_is_refused(sidecar: Any, pki: Pki) -> None:
    foreign = await TlsUpstream(upstream_context(pki, "foreign")).start()
    running = await sidecar(tls_config(foreign.address, pki))
    status, headers, _ = await get(running.url("/x"))
    assert status == 503
    assert "error=connection_refused" in headers["proxy-status"]
    assert "upstream certificate not trusted (unable to get local issuer certificate)" in headers["proxy-status"]
    assert foreign.requests == []
    await foreign.stop()


async def test_without_a_client_certificate_an_upstream_requiring_one_fails_the_request(sidecar: Any,
                                                                                        pki: Pki) -> None:
    upstream = await TlsUpstream(upstream_context(pki)).start()
    running = await sidecar(tls_config(upstream.address, pki, cert=None))
    status, headers, _ = await get(running.url("/x"))
    # TLS 1.3: the upstream refuses after the sidecar's side of the handshake is done; an asyncio server
    # closes without an alert, so the sidecar cannot tell it from a reset (a server that sends its alert
    # makes it a connect failure: tests/unit/http/test_client_codec.py).
    assert status == 502
    assert "error=http_response_incomplete" in headers["proxy-status"]
    assert "does the upstream refuse the client certificate?" in headers["proxy-status"]
    assert upstream.requests == [] and upstream.peers == []
    await upstream.stop()


async def test_rotated_client_certificate_files_apply_to_new_connections(sidecar: Any, pki: Pki,
                                                                         tmp_path: Path) -> None:
    shutil.copy(pki.cert("client"), tmp_path / "me.pem")
    shutil.copy(pki.key("client"), tmp_path / "me-key.pem")
    upstream = await TlsUpstream(upstream_context(pki)).start()
    cluster = f"tls: {{cert: {tmp_path / 'me.pem'}, key: {tmp_path / 'me-key.pem'}, ca: {pki.ca}}}"
    running = await sidecar(outbound_config(upstream.address, cluster_extra=cluster))
    assert (await get(running.url("/a")))[0] == 200
    first_expiry = await metric(running, "sidecar_cert_expiry_timestamp_seconds", listener_or_cluster="backend")
    assert first_expiry > 0
    # Rotation: new files by rename (as cert managers write them); the holder polls every second.
    shutil.copy(pki.cert("impostor"), tmp_path / "new.pem")
    shutil.copy(pki.key("impostor"), tmp_path / "new-key.pem")
    (tmp_path / "new-key.pem").replace(tmp_path / "me-key.pem")
    (tmp_path / "new.pem").replace(tmp_path / "me.pem")
    async with asyncio.timeout(4):
        while await metric(running, "sidecar_tls_reloads_total", result="success") < 1:
            await asyncio.sleep(0.1)
    assert (await get(running.url("/b")))[0] == 200  # the pooled connection keeps working
    upstream.drop_connections()
    await asyncio.sleep(0.05)
    assert (await get(running.url("/c")))[0] == 200
    assert [identity for identity, _, _ in upstream.peers] == [CLIENT_ID, OTHER_ID]
    assert upstream.peers[1][2] is False  # the new context does not resume the old context's session
    clusters = (await admin_json(running, "/clusters"))["clusters"]
    assert clusters[0]["tls"]["identity"] == OTHER_ID
    await upstream.stop()


async def test_a_reload_that_removes_the_tls_cluster_removes_its_expiry_series(sidecar: Any, pki: Pki) -> None:
    upstream = await TlsUpstream(upstream_context(pki)).start()
    running = await sidecar(tls_config(upstream.address, pki))
    expiry = await metric(running, "sidecar_cert_expiry_timestamp_seconds", listener_or_cluster="backend")
    assert expiry > 0
    path = running.app.loaded.path
    path.write_text(path.read_text().replace("tls: {", "# tls: {"))
    assert await running.app.reload()
    assert await metric(running, "sidecar_cert_expiry_timestamp_seconds", listener_or_cluster="backend") == 0
    await upstream.stop()


def inbound_config(pki: Pki, app: str) -> str:
    """A callee sidecar: an mTLS listener `inbound` (the upstream's certificate, client certs from the CA)
    in front of the application at `app`."""
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: inbound
        address: "127.0.0.1:0"
        tls: {{cert: {pki.cert("upstream")}, key: {pki.key("upstream")}, ca: {pki.ca}, require_client_cert: true}}
        routes:
          - {{name: app, match: {{prefix: /}}, cluster: app}}
    clusters:
      - name: app
        endpoints: ["{app}"]
    """


async def test_sidecar_to_sidecar_the_callee_hands_the_callers_identity_to_its_application(sidecar: Any,
                                                                                           pki: Pki) -> None:
    application = await start_upstream(name="app")
    callee = await sidecar(inbound_config(pki, application.address))
    inbound = f"127.0.0.1:{callee.port('inbound')}"
    caller = await sidecar(tls_config(inbound, pki))
    status, _, body = await get(caller.url("/api"))
    assert status == 200, body
    xfcc = json.loads(body)["headers"]["x-forwarded-client-cert"]
    assert xfcc.startswith(f"By={UPSTREAM_ID};Hash=") and xfcc.endswith(f";URI={CLIENT_ID}")
    # Without a client certificate, the callee refuses the caller (TLS 1.3: after the caller's handshake). The
    # callee closes without sending its alert, so the caller sees a reset, with the hint.
    anonymous = await sidecar(tls_config(inbound, pki, cert=None))
    status, headers, _ = await get(anonymous.url("/api"))
    assert status == 502
    assert "does the upstream refuse the client certificate?" in headers["proxy-status"]
    assert len(application.requests) == 1
    await application.stop()
