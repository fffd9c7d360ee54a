"""The development CA against real tools: openssl verifies what we issue, stdlib ssl does real mTLS."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy.security.certs import (
    CertError,
    init_ca,
    issue,
    parse_spiffe_id,
    spiffe_id_from_cert,
)

CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/frontend"
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/checkout"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=False)


def test_init_and_issue_verify_with_openssl(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca")
    leaf = issue(tmp_path / "ca", CLIENT_ID, tmp_path / "out" / "frontend", dns_names=["frontend.shop"])

    assert ca.cert == tmp_path / "ca" / "ca.pem" and ca.key == tmp_path / "ca" / "ca-key.pem"
    assert leaf.cert == tmp_path / "out" / "frontend.pem"
    assert leaf.key == tmp_path / "out" / "frontend-key.pem"
    assert _mode(ca.key) == 0o600 and _mode(leaf.key) == 0o600

    verified = _openssl("verify", "-CAfile", str(ca.cert), str(leaf.cert))
    assert verified.returncode == 0, verified.stderr
    assert "OK" in verified.stdout

    text = _openssl("x509", "-noout", "-text", "-in", str(leaf.cert))
    assert text.returncode == 0, text.stderr
    assert f"URI:{CLIENT_ID}" in text.stdout
    assert "DNS:frontend.shop" in text.stdout
    assert "CA:FALSE" in text.stdout
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text.stdout

    ca_text = _openssl("x509", "-noout", "-text", "-in", str(ca.cert)).stdout
    assert "CA:TRUE" in ca_text and "Certificate Sign, CRL Sign" in ca_text
    assert "horizon-sidecar dev CA (cluster.local)" in ca_text
    assert "URI:spiffe://cluster.local" in ca_text

    key_check = _openssl("pkey", "-in", str(leaf.key), "-noout")
    assert key_check.returncode == 0, key_check.stderr
    assert leaf.key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8


def test_leaf_extensions(tmp_path: Path) -> None:
    init_ca(tmp_path)
    leaf = issue(tmp_path, SERVER_ID, tmp_path / "checkout")
    cert = x509.load_pem_x509_certificate(leaf.cert.read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())

    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_after_utc == leaf.not_after
    assert cert.serial_number == leaf.serial
    assert spiffe_id_from_cert(cert) == SERVER_ID


def test_leaf_never_outlives_the_ca(tmp_path: Path) -> None:
    ca = init_ca(tmp_path, days=10)
    leaf = issue(tmp_path, SERVER_ID, tmp_path / "s", days=400)
    assert leaf.not_after == ca.not_after


def test_relative_prefix_resolves_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_ca(tmp_path / "ca")
    monkeypatch.chdir(tmp_path)
    leaf = issue(Path("ca"), CLIENT_ID, Path("certs/nested/web.v1"))
    assert leaf.cert == tmp_path / "certs" / "nested" / "web.v1.pem"
    assert leaf.key == tmp_path / "certs" / "nested" / "web.v1-key.pem"
    assert leaf.cert.is_file() and _mode(leaf.key) == 0o600


def test_reissue_replaces_a_world_readable_key_with_a_private_one(tmp_path: Path) -> None:
    init_ca(tmp_path)
    stale = tmp_path / "w-key.pem"
    stale.write_text("old")
    stale.chmod(0o644)
    issue(tmp_path, CLIENT_ID, tmp_path / "w")
    assert _mode(stale) == 0o600
    assert stale.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_custom_trust_domain(tmp_path: Path) -> None:
    ca = init_ca(tmp_path, trust_domain="prod.example.org")
    assert ca.trust_domain == "prod.example.org"
    leaf = issue(tmp_path, "spiffe://prod.example.org/web", tmp_path / "web")
    assert _openssl("verify", "-CAfile", str(ca.cert), str(leaf.cert)).returncode == 0


def test_cert_from_another_ca_does_not_verify(tmp_path: Path) -> None:
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    leaf = issue(tmp_path / "b", CLIENT_ID, tmp_path / "leaf")
    result = _openssl("verify", "-CAfile", str(tmp_path / "a" / "ca.pem"), str(leaf.cert))
    assert result.returncode != 0


# --- real mTLS ----------------------------------------------------------------------------------------


def _mtls_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = init_ca(tmp_path / "ca")
    issue(tmp_path / "ca", SERVER_ID, tmp_path / "server", dns_names=["localhost"])
    issue(tmp_path / "ca", CLIENT_ID, tmp_path / "client")
    return ca.cert, tmp_path / "server", tmp_path / "client"


def _server_context(ca: Path, prefix: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{prefix}.pem", f"{prefix}-key.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    return ctx


def _serve_once(ctx: ssl.SSLContext) -> tuple[socket.socket, threading.Thread, dict[str, object]]:
    """Accept one connection on 127.0.0.1, record the peer's SPIFFE ID or the handshake error."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                result["peer_id"] = spiffe_id_from_cert(tls.getpeercert())
                der = tls.getpeercert(binary_form=True)
                result["peer_id_der"] = spiffe_id_from_cert(der)
                tls.sendall(str(result["peer_id"]).encode())
        except (OSError, ssl.SSLError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, thread, result


def test_mtls_handshake_server_reads_client_spiffe_id(tmp_path: Path) -> None:
    ca, server, client = _mtls_pair(tmp_path)
    listener, thread, result = _serve_once(_server_context(ca, server))
    port = listener.getsockname()[1]
    try:
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(cafile=str(ca))
        cctx.load_cert_chain(f"{client}.pem", f"{client}-key.pem")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            cctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert spiffe_id_from_cert(tls.getpeercert()) == SERVER_ID
            echoed = tls.recv(1024).decode()
        thread.join(10)
    finally:
        listener.close()
    assert "error" not in result, result.get("error")
    assert result["peer_id"] == CLIENT_ID
    assert result["peer_id_der"] == CLIENT_ID
    assert echoed == CLIENT_ID


def test_mtls_server_rejects_client_without_certificate(tmp_path: Path) -> None:
    ca, server, _ = _mtls_pair(tmp_path)
    listener, thread, result = _serve_once(_server_context(ca, server))
    port = listener.getsockname()[1]
    try:
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(cafile=str(ca))
        echoed: bytes | None = None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            # TLS 1.3 finishes the client side before the server checks the client certificate, so the
            # rejection surfaces on the handshake or the first read (an alert or EOF), never as data.
            try:
                with cctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    echoed = tls.recv(1024)
            except (ssl.SSLError, OSError):
                echoed = None
        thread.join(10)
    finally:
        listener.close()
    assert not echoed
    assert isinstance(result.get("error"), ssl.SSLError)
    assert "peer_id" not in result


# --- spiffe_id_from_cert ------------------------------------------------------------------------------


def test_spiffe_id_from_peercert_dict_shapes() -> None:
    peer = {"subjectAltName": (("DNS", "a.b"), ("URI", "https://x"), ("URI", "spiffe://td/one"))}
    assert spiffe_id_from_cert(peer) == "spiffe://td/one"
    assert spiffe_id_from_cert({"subjectAltName": (("DNS", "a.b"),)}) is None
    assert spiffe_id_from_cert({}) is None  # what getpeercert() returns for an unverified peer
    assert spiffe_id_from_cert(None) is None
    assert spiffe_id_from_cert(b"not der") is None


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("cluster.local/ns/a", "must start with 'spiffe://'"),
        ("https://cluster.local/ns/a", "must start with 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/a", "lowercase"),
        ("spiffe://cluster.local", "workload path is required"),
        ("spiffe://cluster.local/", "workload path is required"),
        ("spiffe://cluster.local/ns/a?x=1", "query or fragment"),
        ("spiffe://cluster.local/ns/a#frag", "query or fragment"),
        ("spiffe://Cluster.Local/ns/a", "lowercase letters"),
        ("spiffe://cluster.local:8443/ns/a", "port"),
        ("spiffe://cluster.local/ns//a", "empty segment"),
        ("spiffe://cluster.local/ns/a/", "empty segment"),
        ("spiffe://cluster.local/ns/../a", "'..'"),
        ("spiffe://cluster.local/ns/a%20b", "path segment"),
        ("spiffe:///ns/a", "empty"),
    ],
)
def test_bad_spiffe_ids_are_rejected(tmp_path: Path, bad: str, why: str) -> None:
    with pytest.raises(CertError, match="invalid") as info:
        parse_spiffe_id(bad)
    assert why in str(info.value)
    init_ca(tmp_path)
    with pytest.raises(CertError) as issued:
        issue(tmp_path, bad, tmp_path / "x")
    assert bad in str(issued.value)
    assert not (tmp_path / "x.pem").exists() and not (tmp_path / "x-key.pem").exists()


def test_parse_spiffe_id_splits() -> None:
    sid = parse_spiffe_id(CLIENT_ID)
    assert sid.trust_domain == "cluster.local" and sid.path == "/ns/shop/sa/frontend"
    assert str(sid) == CLIENT_ID


def test_wrong_trust_domain_is_rejected(tmp_path: Path) -> None:
    init_ca(tmp_path)
    with pytest.raises(CertError, match=r"trust domain 'other\.domain'.*is for 'cluster\.local'"):
        issue(tmp_path, "spiffe://other.domain/ns/a/sa/b", tmp_path / "x")
    assert not (tmp_path / "x.pem").exists()


def test_issue_without_a_ca(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"no CA in .*ca\.pem does not exist.*certs init"):
        issue(tmp_path / "nothing-here", CLIENT_ID, tmp_path / "x")


def test_issue_with_a_non_ca_certificate(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    leaf = issue(tmp_path / "ca", CLIENT_ID, tmp_path / "leaf")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "ca.pem").write_bytes(leaf.cert.read_bytes())
    (fake / "ca-key.pem").write_bytes(leaf.key.read_bytes())
    with pytest.raises(CertError, match="is not a CA certificate"):
        issue(fake, CLIENT_ID, tmp_path / "x")


def test_issue_with_mismatched_ca_key(tmp_path: Path) -> None:
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    os.replace(tmp_path / "b" / "ca-key.pem", tmp_path / "a" / "ca-key.pem")
    with pytest.raises(CertError, match="does not belong to"):
        issue(tmp_path / "a", CLIENT_ID, tmp_path / "x")


def test_issue_with_garbage_ca(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("nope")
    (tmp_path / "ca-key.pem").write_text("nope")
    with pytest.raises(CertError, match="is not a PEM certificate"):
        issue(tmp_path, CLIENT_ID, tmp_path / "x")


def test_init_refuses_to_overwrite_an_existing_ca(tmp_path: Path) -> None:
    first = init_ca(tmp_path)
    before = first.cert.read_bytes()
    with pytest.raises(CertError, match=r"a CA already exists in .*refusing to overwrite.*--force"):
        init_ca(tmp_path)
    assert first.cert.read_bytes() == before

    replaced = init_ca(tmp_path, force=True)
    assert replaced.cert.read_bytes() != before
    assert _mode(replaced.key) == 0o600


def test_init_refuses_when_only_the_key_exists(tmp_path: Path) -> None:
    (tmp_path / "ca-key.pem").write_text("x")
    with pytest.raises(CertError, match=r"ca-key\.pem"):
        init_ca(tmp_path)


@pytest.mark.parametrize("domain", ["", "UPPER.case", "has space", "a/b"])
def test_init_rejects_bad_trust_domain(tmp_path: Path, domain: str) -> None:
    with pytest.raises(CertError, match="invalid trust domain"):
        init_ca(tmp_path, trust_domain=domain)
    assert not (tmp_path / "ca.pem").exists()


def test_bad_validity_and_dns_names(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="at least 1"):
        init_ca(tmp_path, days=0)
    init_ca(tmp_path)
    with pytest.raises(CertError, match="invalid DNS name"):
        issue(tmp_path, CLIENT_ID, tmp_path / "x", dns_names=["http://x"])
