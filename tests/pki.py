"""Test certificates from the dev CA tooling (proxy.security.certs), and TLS servers' contexts, for the tests
of mTLS origination (unit and integration alike)."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.security.certs import init_ca, issue

UPSTREAM_ID = "spiffe://cluster.local/ns/shop/sa/checkout"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/frontend"
OTHER_ID = "spiffe://cluster.local/ns/shop/sa/impostor"


@dataclass(frozen=True)
class Pki:
    """A dev CA and workload certificates in a tmp dir (paths as strings, as configs name them)."""

    root: Path

    @property
    def ca(self) -> str:
        return str(self.root / "ca" / "ca.pem")

    def cert(self, name: str) -> str:
        return str(self.root / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.root / f"{name}-key.pem")


def make_pki(root: Path) -> Pki:
    """CA `ca/`; `upstream` (UPSTREAM_ID), `client` (CLIENT_ID), `impostor` (OTHER_ID, same CA); `foreign`
    (UPSTREAM_ID, signed by another CA, `other-ca/`); `nameless` (same CA, a DNS SAN and no SPIFFE ID)."""
    init_ca(root / "ca")
    issue(root / "ca", UPSTREAM_ID, root / "upstream", dns_names=["checkout.shop"])
    issue(root / "ca", CLIENT_ID, root / "client")
    issue(root / "ca", OTHER_ID, root / "impostor")
    init_ca(root / "other-ca")
    issue(root / "other-ca", UPSTREAM_ID, root / "foreign")
    _issue_without_spiffe_id(root / "ca", root / "nameless")
    return Pki(root)


def _issue_without_spiffe_id(ca_dir: Path, prefix: Path) -> None:
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nameless")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("nameless.shop")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    prefix.with_name(prefix.name + ".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    prefix.with_name(prefix.name + "-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def upstream_context(pki: Pki, name: str = "upstream", *, require_client_cert: bool = True,
                     alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
    """A TLS server's context serving `name`'s certificate, requiring (or not) a client certificate from the
    dev CA. It offers `h2` first: a client that gets `http/1.1` did not offer `h2`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert(name), pki.key(name))
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    context.set_alpn_protocols(list(alpn))
    return context
