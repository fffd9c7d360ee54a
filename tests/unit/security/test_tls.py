"""The TLS policy, peer identity and hot reload of proxy.security.tls, with real handshakes in memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from proxy.security.certs import init_ca, issue
from proxy.security.tls import (
    BAD_CERTIFICATE,
    EXPIRED,
    NO_CLIENT_CERT,
    PROTOCOL_VERSION,
    UNKNOWN_CA,
    ClientTls,
    ServerTls,
    TlsError,
    client_context,
    handshake_error_reason,
    peer_cert_sha256,
    peer_identity,
    server_context,
)
from proxy.telemetry.metrics import Metrics
from tests.pki import expired_leaf

SERVER_ID = "spiffe://cluster.local/ns/shop/sa/checkout"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/frontend"


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A complete TLS handshake between two contexts over memory BIOs; raises the first side's error."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_side=False)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done["s"] and done["c"]:
            # TLS 1.3: the server judges the client's certificate after the client thinks it is done.
            c.write(b"ping")
            s_in.write(c_out.read())
            assert s.read(4) == b"ping"
            return s, c
    raise AssertionError("handshake did not finish")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", SERVER_ID, tmp_path / "server")
    issue(tmp_path / "ca", CLIENT_ID, tmp_path / "client")
    return tmp_path


def files(pki: Path, name: str) -> tuple[str, str]:
    return str(pki / f"{name}.pem"), str(pki / f"{name}-key.pem")


def ca(pki: Path) -> str:
    return str(pki / "ca" / "ca.pem")


# -- policy -------------------------------------------------------------------------------------------


def test_contexts_allow_tls12_and_13_with_aead_ciphers_only(pki: Path) -> None:
    server = server_context(*files(pki, "server"), ca(pki), True)
    client = client_context(*files(pki, "client"), ca(pki), ["http/1.1"])
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
        assert context.options & ssl.OP_NO_RENEGOTIATION
        names = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert names and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in names)
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.num_tickets == 0
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert not client.check_hostname


def test_mutual_handshake_reads_both_identities_and_the_cert_hash(pki: Path) -> None:
    server = server_context(*files(pki, "server"), ca(pki), True)
    client = client_context(*files(pki, "client"), ca(pki), ["http/1.1"])
    s, c = handshake(server, client)
    assert s.version() == "TLSv1.3"
    assert peer_identity(s) == CLIENT_ID
    assert peer_identity(c) == SERVER_ID
    der = x509.load_pem_x509_certificate((pki / "client.pem").read_bytes()).public_bytes(serialization.Encoding.DER)
    assert peer_cert_sha256(s) == hashlib.sha256(der).hexdigest()
    assert c.selected_alpn_protocol() == "http/1.1"


def test_tls12_is_negotiated_with_an_aead_suite(pki: Path) -> None:
    server = server_context(*files(pki, "server"), ca(pki), True)
    client = client_context(*files(pki, "client"), ca(pki), [])
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    s, _ = handshake(server, client)
    assert s.version() == "TLSv1.2"
    assert "GCM" in s.cipher()[0] or "CHACHA20" in s.cipher()[0]
    assert peer_identity(s) == CLIENT_ID


def test_no_identity_without_a_client_certificate(pki: Path) -> None:
    server = server_context(*files(pki, "server"), ca(pki), False)
    s, _ = handshake(server, client_context(None, None, ca(pki), []))
    assert peer_identity(s) == ""
    assert peer_cert_sha256(s) == ""
    assert peer_identity(None) == ""


def test_hostname_is_not_checked_but_the_chain_is(pki: Path, tmp_path: Path) -> None:
    # The server's certificate has no DNS name at all: the client still accepts it (identity by SPIFFE ID).
    handshake(server_context(*files(pki, "server"), None, False), client_context(None, None, ca(pki), []))
    init_ca(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(*files(pki, "server"), None, False),
                  client_context(None, None, str(tmp_path / "other" / "ca.pem"), []))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_old_protocol_versions_are_refused(pki: Path) -> None:
    server = server_context(*files(pki, "server"), None, False)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    try:
        client.minimum_version = ssl.TLSVersion.TLSv1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
        client.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises(ssl.SSLError) as caught:
        handshake(server, client)
    # Whichever side noticed first; the server's own error is classified in the integration tests.
    assert caught.value.reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE")


# -- handshake error reasons (server side) ------------------------------------------------------------


def server_error(server: ssl.SSLContext, client: ssl.SSLContext) -> BaseException:
    """The server side's exception of a failing handshake."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_side=False)
    for _ in range(20):
        try:
            c.do_handshake()
            c.write(b"x")
        except ssl.SSLError as exc:
            if not isinstance(exc, ssl.SSLWantReadError):
                pass
        s_in.write(c_out.read())
        try:
            s.do_handshake()
            s.read(1)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return exc
        c_in.write(s_out.read())
    raise AssertionError("the server did not fail")


def test_reasons_of_refused_client_certificates(pki: Path, tmp_path: Path) -> None:
    server = server_context(*files(pki, "server"), ca(pki), True)
    assert handshake_error_reason(server_error(server, client_context(None, None, ca(pki), []))) == NO_CLIENT_CERT
    init_ca(tmp_path / "other")
    issue(tmp_path / "other", CLIENT_ID, tmp_path / "stranger")
    stranger = client_context(str(tmp_path / "stranger.pem"), str(tmp_path / "stranger-key.pem"), ca(pki), [])
    assert handshake_error_reason(server_error(server, stranger)) == UNKNOWN_CA
    old = client_context(*expired_leaf(pki, "old", CLIENT_ID), ca(pki), [])
    assert handshake_error_reason(server_error(server, old)) == EXPIRED


def test_reason_table_covers_timeouts_and_closes() -> None:
    assert handshake_error_reason(ConnectionAbortedError("SSL handshake is taking longer than 1 seconds")) == (
        "handshake_timeout")
    assert handshake_error_reason(TimeoutError()) == "handshake_timeout"
    assert handshake_error_reason(ConnectionResetError()) == "peer_closed"
    assert handshake_error_reason(None) == "peer_closed"
    assert handshake_error_reason(RuntimeError("?")) == "other"
    verify = ssl.SSLCertVerificationError()
    verify.verify_code = 50
    assert handshake_error_reason(verify) == BAD_CERTIFICATE
    old = ssl.SSLError()
    old.reason = "UNSUPPORTED_PROTOCOL"
    assert handshake_error_reason(old) == PROTOCOL_VERSION


# -- material and reload ------------------------------------------------------------------------------


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_server_material_reports_identity_and_expiry(pki: Path) -> None:
    registry = CollectorRegistry()
    tls = ServerTls("inbound", *files(pki, "server"), ca(pki), True, Metrics(registry))
    assert tls.identity == SERVER_ID
    leaf = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    expiry = metric(registry, "sidecar_cert_expiry_timestamp_seconds", listener_or_cluster="inbound")
    assert expiry == leaf.not_valid_after_utc.timestamp() == tls.not_after


def test_unloadable_material_is_a_tls_error_naming_the_files(pki: Path) -> None:
    with pytest.raises(TlsError, match=r"inbound: .*cert .*client\.pem.*does not match the private key"):
        ServerTls("inbound", str(pki / "client.pem"), str(pki / "server-key.pem"), ca(pki), True)
    with pytest.raises(TlsError, match="No such file"):
        ServerTls("inbound", str(pki / "nope.pem"), str(pki / "server-key.pem"), None, False)


def rotate(pki: Path, spiffe_id: str, name: str = "server") -> None:
    """Issue a new certificate into place by rename (what cert-manager and `certs issue` do)."""
    issue(pki / "ca", spiffe_id, pki / name)


def test_a_rotation_reaches_the_next_handshake_through_the_front_context(pki: Path) -> None:
    registry = CollectorRegistry()
    tls = ServerTls("inbound", *files(pki, "server"), ca(pki), True, Metrics(registry))
    front = tls.context
    client = client_context(*files(pki, "client"), ca(pki), [])
    _, before = handshake(front, client)
    assert peer_identity(before) == SERVER_ID
    new_id = "spiffe://cluster.local/ns/shop/sa/checkout-v2"
    rotate(pki, new_id)
    assert tls.changed()
    assert tls.reload()
    assert tls.context is front  # listeners keep handing out the same context ...
    _, after = handshake(front, client)
    assert peer_identity(after) == new_id  # ... and the handshake serves the new certificate
    assert tls.identity == new_id
    assert metric(registry, "sidecar_tls_reloads_total", result="success") == 1
    # The same bytes again (a touch, or a rewrite): nothing is counted.
    os.utime(pki / "server.pem")
    assert tls.changed()
    assert not tls.reload()
    assert metric(registry, "sidecar_tls_reloads_total", result="success") == 1


def test_a_new_ca_applies_to_the_next_handshake(pki: Path, tmp_path: Path) -> None:
    tls = ServerTls("inbound", *files(pki, "server"), ca(pki), True)
    init_ca(tmp_path / "other")
    issue(tmp_path / "other", CLIENT_ID, tmp_path / "stranger")
    stranger = client_context(str(tmp_path / "stranger.pem"), str(tmp_path / "stranger-key.pem"), ca(pki), [])
    with pytest.raises(ssl.SSLError):
        handshake(tls.context, stranger)
    # Trust both CAs (a CA rotation's overlap): the stranger now gets in.
    bundle = (pki / "ca" / "ca.pem").read_bytes() + (tmp_path / "other" / "ca.pem").read_bytes()
    (pki / "ca" / "ca.pem").write_bytes(bundle)
    assert tls.reload()
    s, _ = handshake(tls.context, stranger)
    assert peer_identity(s) == CLIENT_ID


def test_a_mismatched_or_half_written_pair_is_refused_and_the_old_kept(pki: Path) -> None:
    registry = CollectorRegistry()
    tls = ServerTls("inbound", *files(pki, "server"), ca(pki), True, Metrics(registry))
    client = client_context(*files(pki, "client"), ca(pki), [])
    good = (pki / "server.pem").read_bytes()
    # A new certificate whose key has not been written yet.
    (pki / "server.pem").write_bytes((pki / "client.pem").read_bytes())
    assert tls.changed()
    assert not tls.reload()
    # Half a PEM.
    (pki / "server.pem").write_bytes(good[: len(good) // 2])
    assert not tls.reload()
    assert metric(registry, "sidecar_tls_reloads_total", result="failure") == 2
    assert metric(registry, "sidecar_tls_reloads_total", result="success") == 0
    _, c = handshake(tls.context, client)
    assert peer_identity(c) == SERVER_ID
    assert tls.identity == SERVER_ID


def test_a_kubernetes_symlink_swap_is_noticed(pki: Path, tmp_path: Path) -> None:
    # The layout a Secret volume has: tls.crt -> ..data/tls.crt, ..data -> ..2024_01_01 (swapped atomically).
    mount = tmp_path / "mount"
    first = mount / "..v1"
    first.mkdir(parents=True)
    for name, source in (("tls.crt", "server.pem"), ("tls.key", "server-key.pem")):
        (first / name).write_bytes((pki / source).read_bytes())
        (mount / name).symlink_to(Path("..data") / name)
    (mount / "..data").symlink_to("..v1")
    tls = ServerTls("inbound", str(mount / "tls.crt"), str(mount / "tls.key"), ca(pki), True)
    assert not tls.changed()
    new_id = "spiffe://cluster.local/ns/shop/sa/checkout-v3"
    issue(pki / "ca", new_id, tmp_path / "v2")
    second = mount / "..v2"
    second.mkdir()
    (second / "tls.crt").write_bytes((tmp_path / "v2.pem").read_bytes())
    (second / "tls.key").write_bytes((tmp_path / "v2-key.pem").read_bytes())
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    assert tls.changed()
    assert tls.reload()
    _, c = handshake(tls.context, client_context(*files(pki, "client"), ca(pki), []))
    assert peer_identity(c) == new_id


def test_client_material_swaps_its_context(pki: Path) -> None:
    registry = CollectorRegistry()
    tls = ClientTls("campaign-v1", *files(pki, "client"), ca(pki), ["http/1.1"], Metrics(registry))
    before = tls.context
    assert metric(registry, "sidecar_cert_expiry_timestamp_seconds", listener_or_cluster="campaign-v1") > 0
    rotate(pki, "spiffe://cluster.local/ns/shop/sa/frontend-v2", "client")
    assert tls.reload()
    assert tls.context is not before
    s, _ = handshake(server_context(*files(pki, "server"), ca(pki), True), tls.context)
    assert peer_identity(s) == "spiffe://cluster.local/ns/shop/sa/frontend-v2"


async def test_watch_reloads_when_the_files_change(pki: Path) -> None:
    registry = CollectorRegistry()
    tls = ServerTls("inbound", *files(pki, "server"), ca(pki), True, Metrics(registry))
    task = asyncio.create_task(tls.watch(0.02))
    try:
        rotate(pki, "spiffe://cluster.local/ns/shop/sa/checkout-v4")
        for _ in range(200):
            await asyncio.sleep(0.01)
            if tls.identity.endswith("-v4"):
                break
        assert tls.identity.endswith("-v4")
    finally:
        task.cancel()
    assert metric(registry, "sidecar_tls_reloads_total", result="success") == 1
