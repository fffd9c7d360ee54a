"""mTLS origination (proxy.security.origination) through a real pool and real TLS servers, on asyncio's loop
and on uvloop: the identity check, SNI, ALPN, session resumption per endpoint, and rotation."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from proxy.clock import Clock
from proxy.config.model import ClusterTlsConfig
from proxy.errors import FailureKind, UpstreamError
from proxy.http.client import ClientConnection
from proxy.security.certs import spiffe_id_from_cert
from proxy.security.origination import ClusterOrigin
from proxy.security.tls import ClientTls
from proxy.telemetry.metrics import Metrics
from proxy.upstream.pool import Pool, PoolSettings
from tests.pki import CLIENT_ID, OTHER_ID, UPSTREAM_ID, Pki, make_pki, upstream_context

# Every test here runs on both loops (tests/conftest.py): resumption relies on how each makes its SSL objects.
LOOPS = ("asyncio", "uvloop")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Seen:
    """What a TLS upstream saw of one connection."""

    identity: str | None
    resumed: bool
    alpn: str | None
    server_name: str | None


@dataclass
class TlsUpstream:
    port: int
    seen: list[Seen] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)
    server: asyncio.Server | None = None


@pytest.fixture
async def serve(pki: Pki) -> AsyncIterator[Any]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(name: str = "upstream", *, require_client_cert: bool = True, port: int = 0) -> TlsUpstream:
        context = upstream_context(pki, name, require_client_cert=require_client_cert)
        upstream = TlsUpstream(port)

        def on_sni(_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            upstream.names.append(server_name)

        context.sni_callback = on_sni

        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            obj = writer.get_extra_info("ssl_object")
            der = obj.getpeercert(binary_form=True)
            upstream.seen.append(Seen(spiffe_id_from_cert(der) if der else None, obj.session_reused,
                                      obj.selected_alpn_protocol(), upstream.names[-1] if upstream.names else None))
            writers.append(writer)

        server = await asyncio.start_server(accept, "127.0.0.1", port, ssl=context)
        servers.append(server)
        upstream.server = server
        upstream.port = server.sockets[0].getsockname()[1]
        return upstream

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()


def origin(pki: Pki, *, cert: str | None = "client", expect: str | None = UPSTREAM_ID,
           server_name: str | None = None, metrics: Metrics | None = None) -> ClusterOrigin:
    config = ClusterTlsConfig(cert=pki.cert(cert) if cert else None, key=pki.key(cert) if cert else None,
                              ca=pki.ca, expect_identity=expect, server_name=server_name)
    return ClusterOrigin.from_config("backend", config, metrics)


def pool(port: int, tls: ClusterOrigin, host: str = "127.0.0.1", connect_timeout: float = 2.0) -> Pool:
    settings = PoolSettings(connect_timeout=connect_timeout, connector=ClientConnection, tls=tls)
    return Pool(host, port, settings, f"cluster backend: endpoint {host}:{port}", Clock())


async def connect(target: Pool) -> ClientConnection:
    conn = await target.connect()
    assert isinstance(conn, ClientConnection)
    # TLS 1.3 session tickets follow the handshake: give the client a moment to read them.
    await asyncio.sleep(0.02)
    return conn


async def test_the_upstream_sees_the_client_certificate_and_alpn_http11(pki: Pki, serve: Any) -> None:
    upstream = await serve()
    conn = await connect(pool(upstream.port, origin(pki)))
    assert upstream.seen[0].identity == CLIENT_ID
    # The server prefers h2: it got http/1.1 because that is all the sidecar offered.
    assert upstream.seen[0].alpn == "http/1.1"
    assert conn.transport is not None
    assert conn.transport.get_extra_info("ssl_object").version() in ("TLSv1.3", "TLSv1.2")
    conn.close()


async def test_a_second_connection_resumes_the_endpoints_session(pki: Pki, serve: Any) -> None:
    upstream = await serve()
    tls = origin(pki)
    target = pool(upstream.port, tls)
    first = await connect(target)
    second = await connect(target)
    third = await connect(target)
    assert [s.resumed for s in upstream.seen] == [False, True, True]
    # Resumed or not, the upstream knows who called and the sidecar checked who answered.
    assert [s.identity for s in upstream.seen] == [CLIENT_ID] * 3
    assert target.tls_snapshot() == {"full_handshakes": 1, "resumed_handshakes": 2}
    for conn in (first, second, third):
        conn.close()


async def test_a_session_the_upstream_declines_is_replaced_by_the_next_full_handshakes(pki: Pki,
                                                                                    serve: Any) -> None:
    first = await serve()
    target = pool(first.port, origin(pki))
    conns = [await connect(target), await connect(target)]
    assert [s.resumed for s in first.seen] == [False, True]
    for conn in conns:
        conn.close()
    assert first.server is not None
    first.server.close()  # and another process takes the port: other ticket keys, so the ticket is no good
    restarted = await serve(port=first.port)
    conns = [await connect(target), await connect(target), await connect(target)]
    assert [s.resumed for s in restarted.seen] == [False, True, True]
    assert target.tls_snapshot() == {"full_handshakes": 2, "resumed_handshakes": 3}
    for conn in conns:
        conn.close()


async def test_sessions_are_per_endpoint(pki: Pki, serve: Any) -> None:
    one, two = await serve(), await serve()
    tls = origin(pki)
    a, b = pool(one.port, tls), pool(two.port, tls)
    conns = [await connect(a), await connect(b), await connect(a)]
    assert [s.resumed for s in one.seen] == [False, True]
    assert [s.resumed for s in two.seen] == [False]  # not offered the other endpoint's session
    for conn in conns:
        conn.close()


async def test_a_rotated_client_certificate_applies_to_new_connections(pki: Pki, serve: Any, tmp_path: Path) -> None:
    upstream = await serve()
    cert, key = tmp_path / "me.pem", tmp_path / "me-key.pem"
    cert.write_bytes(Path(pki.cert("client")).read_bytes())
    key.write_bytes(Path(pki.key("client")).read_bytes())
    tls = ClusterOrigin("backend", ClientTls("backend", str(cert), str(key), pki.ca, ("http/1.1",)), UPSTREAM_ID)
    target = pool(upstream.port, tls)
    before = await connect(target)
    cert.write_bytes(Path(pki.cert("impostor")).read_bytes())
    key.write_bytes(Path(pki.key("impostor")).read_bytes())
    assert tls.material.reload()
    after = await connect(target)
    # The new context made a full handshake (the old context's session is not offered) with the new cert.
    assert [(s.identity, s.resumed) for s in upstream.seen] == [(CLIENT_ID, False), (OTHER_ID, False)]
    # The connection opened before the rotation is still open and usable.
    assert not before.closed
    before.close()
    after.close()


@pytest.mark.parametrize(("server_name", "host", "expected"), [
    ("checkout.shop", "127.0.0.1", "checkout.shop"),  # server_name wins
    (None, "127.0.0.1", None),  # an IP literal is never sent as SNI
    (None, "localhost", "localhost"),  # a DNS-named endpoint is
])
async def test_sni(pki: Pki, serve: Any, server_name: str | None, host: str, expected: str | None) -> None:
    upstream = await serve()
    conn = await connect(pool(upstream.port, origin(pki, server_name=server_name), host=host))
    assert upstream.names == [expected]
    conn.close()


async def refused(target: Pool) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await target.connect()
    assert caught.value.kind is FailureKind.CONNECT_REFUSED
    assert target.open_count == 0
    return caught.value


async def test_an_unexpected_identity_is_refused_as_a_connect_failure(pki: Pki, serve: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    upstream = await serve("impostor")
    error = await refused(pool(upstream.port, origin(pki)))
    assert error.context == (f"cluster backend: endpoint 127.0.0.1:{upstream.port}: upstream identity "
                             f"{OTHER_ID} is not the expected {UPSTREAM_ID}")
    assert [r.getMessage() for r in caplog.records if r.name == "proxy.upstream.pool"] == [error.context]


async def test_a_certificate_without_spiffe_id_is_refused_when_one_is_expected(pki: Pki, serve: Any) -> None:
    upstream = await serve("nameless")
    error = await refused(pool(upstream.port, origin(pki)))
    assert error.context.endswith(f"upstream certificate has no SPIFFE ID; expected {UPSTREAM_ID}")
    # Without expect_identity, any certificate from the CA will do.
    conn = await connect(pool(upstream.port, origin(pki, expect=None)))
    conn.close()


async def test_an_upstream_certificate_from_another_ca_is_refused(pki: Pki, serve: Any) -> None:
    upstream = await serve("foreign")
    error = await refused(pool(upstream.port, origin(pki)))
    assert "TLS handshake failed: upstream certificate not trusted (unable to get local issuer certificate)" \
        in error.context


async def test_a_plain_http_upstream_is_refused(pki: Pki) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    error = await refused(pool(port, origin(pki)))
    assert error.context.endswith("TLS handshake failed: the upstream does not speak TLS (wrong version number)")
    server.close()


async def test_a_handshake_that_never_finishes_is_a_connect_timeout(pki: Pki) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts the TCP connection, never answers the ClientHello

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(UpstreamError) as caught:
        await pool(port, origin(pki), connect_timeout=0.2).connect()
    assert caught.value.kind is FailureKind.CONNECT_TIMEOUT
    assert caught.value.context.endswith("connect timeout after 0.2s")
    for writer in held:
        writer.close()
    server.close()


def test_the_client_certificate_expiry_is_a_gauge_of_the_cluster(pki: Pki) -> None:
    metrics = Metrics(CollectorRegistry())
    tls = origin(pki, metrics=metrics)
    value = metrics.registry.get_sample_value("sidecar_cert_expiry_timestamp_seconds",
                                              {"listener_or_cluster": "backend"})
    assert value == tls.material.not_after and value is not None
    assert tls.snapshot()["identity"] == CLIENT_ID


def test_a_context_used_for_anything_else_wraps_as_asked(pki: Pki) -> None:
    tls = origin(pki)
    context = tls.context()
    assert tls.context() is context  # hooked once per context in force
    obj = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="x.example")
    assert obj.session is None and obj.server_hostname == "x.example"
