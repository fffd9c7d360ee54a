"""A throwaway PKI for TLS tests: a development CA (`proxy.security.certs`, what `sidecar certs` runs) and the
certificates tests need, including the ones `sidecar certs issue` refuses to make (expired, from another CA,
without a SPIFFE ID); the `certs/dev` the examples in config/ name (`dev_certs`); and the set and server context
the mTLS origination tests use (`make_pki`, `upstream_context`)."""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.security.certs import init_ca, issue

TRUST_DOMAIN = "cluster.local"
EXAMPLES = Path(__file__).resolve().parents[1] / "config"


def spiffe(service_account: str, namespace: str = "shop") -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


class Pki:
    """A CA in `root/ca` and leaves issued by it as `root/<name>.pem` + `root/<name>-key.pem`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        init_ca(root / "ca", TRUST_DOMAIN)

    @property
    def ca(self) -> str:
        return str(self.root / "ca" / "ca.pem")

    def cert(self, name: str) -> str:
        return str(self.root / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.root / f"{name}-key.pem")

    def leaf(self, name: str, spiffe_id: str, dns_names: list[str] | None = None) -> tuple[str, str]:
        """Issue (or re-issue, replacing the files by rename) `name`'s certificate and key."""
        files = issue(self.root / "ca", spiffe_id, self.root / name, dns_names=dns_names)
        return str(files.cert), str(files.key)

    def foreign(self, name: str, spiffe_id: str) -> tuple[str, str]:
        """A certificate for `spiffe_id` from another CA (same trust domain name, different key)."""
        other = self.root / "other-ca"
        if not (other / "ca.pem").exists():
            init_ca(other, TRUST_DOMAIN)
        files = issue(other, spiffe_id, self.root / name)
        return str(files.cert), str(files.key)

    def expired(self, name: str, spiffe_id: str) -> tuple[str, str]:
        """A certificate from this CA that expired yesterday."""
        return expired_leaf(self.root, name, spiffe_id)

    def nameless(self, name: str) -> tuple[str, str]:
        """A certificate from this CA with a DNS name and no SPIFFE ID (no URI SAN)."""
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{name}.shop")]), critical=False))
        return signed_leaf(self.root, name, builder)

    def mounted(self, mount: Path, name: str, version: str) -> tuple[str, str]:
        """Put `name`'s files in a Kubernetes Secret volume layout (`mount/tls.crt -> ..data/tls.crt`,
        `..data -> ..<version>`), swapping `..data` atomically when the mount already exists, as the kubelet
        does. Returns the stable paths."""
        target = mount / f"..{version}"
        target.mkdir(parents=True)
        (target / "tls.crt").write_bytes((self.root / f"{name}.pem").read_bytes())
        (target / "tls.key").write_bytes((self.root / f"{name}-key.pem").read_bytes())
        for link in ("tls.crt", "tls.key"):
            if not (mount / link).is_symlink():
                (mount / link).symlink_to(Path("..data") / link)
        (mount / "..data_tmp").symlink_to(target.name)
        os.replace(mount / "..data_tmp", mount / "..data")
        return str(mount / "tls.crt"), str(mount / "tls.key")


# -- the examples' files ----------------------------------------------------------------------------------------

DEV_IDS = {name: spiffe(name, "default") for name in ("payment-service", "campaign-service", "intruder")}


def dev_certs(root: Path) -> Path:
    """`root/certs/dev` as the commands in certs/README.md make it (the CA, payment-service and campaign-service),
    plus `intruder`, an identity from the same CA that the examples do not allow. Returns the directory."""
    certs = root / "certs" / "dev"
    init_ca(certs, TRUST_DOMAIN)
    for name, spiffe_id in DEV_IDS.items():
        issue(certs, spiffe_id, certs / name)
    return certs


def tls_examples(root: Path, *names: str) -> list[Path]:
    """Copies of config/NAME... in `root/config`, beside `root/certs/dev` (`dev_certs`): the examples that name
    TLS files (`../certs/dev/...`, git-ignored) load there."""
    dev_certs(root)
    (root / "config").mkdir()
    copies = [root / "config" / name for name in names]
    for copy in copies:
        copy.write_bytes((EXAMPLES / copy.name).read_bytes())
    return copies


# -- mTLS origination ------------------------------------------------------------------------------------------

UPSTREAM_ID = spiffe("checkout")
CLIENT_ID = spiffe("frontend")
OTHER_ID = spiffe("impostor")


def make_pki(root: Path) -> Pki:
    """CA `ca/`; `upstream` (UPSTREAM_ID), `client` (CLIENT_ID), `impostor` (OTHER_ID, same CA); `foreign`
    (UPSTREAM_ID, signed by another CA); `nameless` (same CA, a DNS SAN and no SPIFFE ID)."""
    pki = Pki(root)
    pki.leaf("upstream", UPSTREAM_ID, dns_names=["checkout.shop"])
    pki.leaf("client", CLIENT_ID)
    pki.leaf("impostor", OTHER_ID)
    pki.foreign("foreign", UPSTREAM_ID)
    pki.nameless("nameless")
    return pki


def upstream_context(pki: Pki, name: str = "upstream", *, require_client_cert: bool = True,
                     alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
    """A TLS server's context serving `name`'s certificate, requiring (or not) a client certificate from the
    CA. It offers `h2` first: a client that gets `http/1.1` did not offer `h2`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert(name), pki.key(name))
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    context.set_alpn_protocols(list(alpn))
    return context


def expired_leaf(root: Path, name: str, spiffe_id: str) -> tuple[str, str]:
    """A leaf with `spiffe_id`, signed by the CA in `root/ca`, that expired yesterday (`sidecar certs issue`
    cannot make one)."""
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([]))
               .not_valid_before(now - dt.timedelta(days=10)).not_valid_after(now - dt.timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                              critical=False))
    return signed_leaf(root, name, builder)


def signed_leaf(root: Path, name: str, builder: x509.CertificateBuilder) -> tuple[str, str]:
    """Sign `builder` (subject, validity and extensions set) for a new P-256 key with the CA in `root/ca`;
    write `root/<name>.pem` and `root/<name>-key.pem` and return their paths."""
    ca_cert = x509.load_pem_x509_certificate((root / "ca" / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((root / "ca" / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (builder.issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).sign(ca_key, hashes.SHA256()))
    cert_path, key_path = root / f"{name}.pem", root / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
