"""Development CA tooling: `sidecar certs init` and `sidecar certs issue`.

Owns creating a self-signed development CA (`DIR/ca.pem`, `DIR/ca-key.pem`), issuing X.509-SVID-shaped
workload certificates (SPIFFE ID as the URI SAN) signed by it, SPIFFE ID validation, and reading the
SPIFFE ID back out of a peer certificate for mTLS. Private keys are written mode 0600 from the first
byte.

Must not: build TLS contexts or sockets (that is the TLS layer's job), print or exit (the CLI prints
`str(CertError)`), touch the network, or be used as a production CA: there is no revocation, no
rotation and the CA key sits on disk unencrypted.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "CaFiles",
    "CertError",
    "IssuedFiles",
    "SpiffeId",
    "init_ca",
    "issue",
    "parse_spiffe_id",
    "spiffe_id_from_cert",
    "validate_trust_domain",
]

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"

_SCHEME = "spiffe://"
# SPIFFE-ID spec section 2: trust domains are lowercase letters, digits, '.', '-', '_' only; path
# segments additionally allow uppercase letters. No percent-encoding, so a plain character class suffices.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_MAX_ID_BYTES = 2048  # SPIFFE-ID spec section 2.3: SPIFFE IDs are at most 2048 bytes.
_MAX_TRUST_DOMAIN = 255
# Certificates are backdated a little so a peer whose clock runs slightly behind ours does not reject a
# certificate issued "in the future" during the first minutes of its life.
_BACKDATE = dt.timedelta(minutes=5)

_CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertError(Exception):
    """A user-facing failure of the CA tooling; `str()` is a complete one-line message."""


class SpiffeId(NamedTuple):
    """A validated SPIFFE ID split into its trust domain and path (path starts with '/')."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"


@dataclass(frozen=True, slots=True)
class CaFiles:
    """What `init_ca` wrote."""

    cert: Path
    key: Path
    trust_domain: str
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """What `issue` wrote."""

    cert: Path
    key: Path
    spiffe_id: str
    serial: int
    not_after: dt.datetime


# --- SPIFFE IDs ---------------------------------------------------------------------------------------


def validate_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` if it is a valid SPIFFE trust domain name, else raise CertError."""
    if not trust_domain:
        raise CertError("invalid trust domain: it is empty")
    if len(trust_domain) > _MAX_TRUST_DOMAIN:
        raise CertError(f"invalid trust domain {trust_domain!r}: longer than {_MAX_TRUST_DOMAIN} characters")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise CertError(
            f"invalid trust domain {trust_domain!r}: only lowercase letters, digits, '.', '-' and '_' "
            "are allowed"
        )
    return trust_domain


def parse_spiffe_id(spiffe_id: str) -> SpiffeId:
    """Validate a workload SPIFFE ID `spiffe://<trust domain>/<path>`; raise CertError saying what is wrong.

    A path is required: an ID naming only the trust domain identifies the domain, not a workload.
    """
    where = f"invalid SPIFFE ID {spiffe_id!r}"
    if len(spiffe_id.encode()) > _MAX_ID_BYTES:
        raise CertError(f"{where}: longer than {_MAX_ID_BYTES} bytes")
    if not spiffe_id.lower().startswith(_SCHEME):
        raise CertError(f"{where}: must start with {_SCHEME!r}")
    if not spiffe_id.startswith(_SCHEME):
        raise CertError(f"{where}: the scheme must be lowercase {_SCHEME!r}")
    rest = spiffe_id[len(_SCHEME) :]
    if "?" in rest or "#" in rest:
        raise CertError(f"{where}: a query or fragment is not allowed")
    trust_domain, slash, path = rest.partition("/")
    if "@" in trust_domain or ":" in trust_domain:
        raise CertError(f"{where}: the trust domain must not contain a port or user info")
    try:
        validate_trust_domain(trust_domain)
    except CertError as exc:
        raise CertError(f"{where}: {exc}") from None
    if not slash or not path:
        raise CertError(f"{where}: a workload path is required, e.g. {_SCHEME}{trust_domain}/ns/NS/sa/SA")
    for segment in path.split("/"):
        if not segment:
            raise CertError(f"{where}: the path has an empty segment (double or trailing '/')")
        if segment in (".", ".."):
            raise CertError(f"{where}: the path must not contain '.' or '..' segments")
        if not _SEGMENT_RE.fullmatch(segment):
            raise CertError(
                f"{where}: path segment {segment!r} may only contain letters, digits, '.', '-' and '_'"
            )
    return SpiffeId(trust_domain, "/" + path)


def spiffe_id_from_cert(peercert: bytes | Mapping[str, object] | x509.Certificate | None) -> str | None:
    """Return the first `spiffe://` URI SAN of a peer certificate, or None if it has none.

    Accepts what `ssl.SSLSocket.getpeercert()` returns (a dict, or `{}`/None when the peer sent no
    verified certificate), the DER bytes from `getpeercert(binary_form=True)`, or a parsed certificate.
    The caller must have verified the chain already: this reads an identity, it does not authenticate it.
    """
    if peercert is None:
        return None
    if isinstance(peercert, bytes | bytearray):
        try:
            peercert = x509.load_der_x509_certificate(bytes(peercert))
        except ValueError:
            return None
    if isinstance(peercert, x509.Certificate):
        return next((u for u in _uri_sans(peercert) if u.startswith(_SCHEME)), None)
    sans = peercert.get("subjectAltName", ())
    if not isinstance(sans, tuple):
        return None
    for entry in sans:
        if (
            isinstance(entry, tuple)
            and len(entry) == 2
            and entry[0] == "URI"
            and isinstance(entry[1], str)
            and entry[1].startswith(_SCHEME)
        ):
            return entry[1]
    return None


# --- CA -----------------------------------------------------------------------------------------------


def init_ca(
    directory: Path, trust_domain: str = "cluster.local", days: int = 365, *, force: bool = False
) -> CaFiles:
    """Create a self-signed ECDSA P-256 development CA as `directory/ca.pem` + `directory/ca-key.pem`.

    Refuses to replace an existing CA unless `force`: every certificate it issued would stop verifying.
    """
    validate_trust_domain(trust_domain)
    _check_days(days)
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise CertError(
            f"a CA already exists in {directory} ({', '.join(p.name for p in existing)}); refusing to "
            "overwrite it because certificates it issued would stop verifying (use --force to replace it)"
        )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"cannot create CA directory {directory}: {exc.strerror or exc}") from None

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "horizon-sidecar"),
            x509.NameAttribute(NameOID.COMMON_NAME, _ca_common_name(trust_domain)),
        ]
    )
    now = _now()
    not_after = now + dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        # path_length=0: this CA signs workloads directly, never intermediates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # The trust-domain URI SAN is how `issue` learns which SPIFFE IDs this CA may sign.
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(_SCHEME + trust_domain)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    # Key first: a cert without its key is useless, and a half-written CA must not look complete.
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return CaFiles(cert=cert_path, key=key_path, trust_domain=trust_domain, not_after=not_after)


def issue(
    directory: Path,
    spiffe_id: str,
    out_prefix: Path,
    days: int = 90,
    dns_names: list[str] | None = None,
) -> IssuedFiles:
    """Issue an ECDSA P-256 workload certificate for `spiffe_id`, signed by the CA in `directory`.

    Writes `<out_prefix>.pem` (the leaf certificate) and `<out_prefix>-key.pem` (PKCS#8, mode 0600).
    A relative `out_prefix` resolves against the current directory. The leaf never outlives the CA.
    """
    parsed = parse_spiffe_id(spiffe_id)
    _check_days(days)
    ca_cert, ca_key = _load_ca(Path(directory))
    ca_domain = _ca_trust_domain(ca_cert)
    if ca_domain is not None and parsed.trust_domain != ca_domain:
        raise CertError(
            f"SPIFFE ID {spiffe_id!r} is in trust domain {parsed.trust_domain!r} but the CA in {directory} "
            f"is for {ca_domain!r}"
        )
    dns = list(dns_names or [])
    for name in dns:
        # A DNS SAN with a scheme, port or path would be silently useless for hostname checks.
        if not name or any(c in name for c in "/:@ ") or name.startswith("."):
            raise CertError(f"invalid DNS name {name!r}")

    now = _now()
    ca_not_after = ca_cert.not_valid_after_utc
    if ca_not_after <= now:
        raise CertError(f"the CA in {directory} expired at {ca_not_after:%Y-%m-%d %H:%M}Z; run init --force")
    # Clamp to the CA's lifetime: a leaf that outlives its issuer fails verification after that anyway.
    not_after = min(now + dt.timedelta(days=days), ca_not_after)

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    sans += [x509.DNSName(name) for name in dns]
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "horizon-sidecar")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # Meaningless for an EC key but harmless, and some RSA-minded verifiers expect it.
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Both: a sidecar is a TLS server inbound and a TLS client outbound with the same identity.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    prefix = Path(out_prefix)
    if not prefix.is_absolute():
        prefix = Path.cwd() / prefix
    if not prefix.name:
        raise CertError(f"invalid output prefix {str(out_prefix)!r}: it names no file")
    cert_path = prefix.with_name(prefix.name + ".pem")
    key_path = prefix.with_name(prefix.name + "-key.pem")
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"cannot create output directory {prefix.parent}: {exc.strerror or exc}") from None
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return IssuedFiles(cert=cert_path, key=key_path, spiffe_id=spiffe_id, serial=serial, not_after=not_after)


# --- helpers ------------------------------------------------------------------------------------------


def _ca_common_name(trust_domain: str) -> str:
    cn = f"horizon-sidecar dev CA ({trust_domain})"
    # X.520 caps commonName at 64 characters; a long trust domain is still recorded in the URI SAN.
    return cn if len(cn) <= 64 else "horizon-sidecar dev CA"


def _check_days(days: int) -> None:
    if days < 1:
        raise CertError(f"invalid validity of {days} days: must be at least 1")


def _now() -> dt.datetime:
    # Whole seconds: X.509 times have no fractions, so the returned not_after matches the certificate.
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def _ca_trust_domain(ca_cert: x509.Certificate) -> str | None:
    """The trust domain named by the CA's `spiffe://<td>` URI SAN, or None for a CA without one."""
    for uri in _uri_sans(ca_cert):
        if uri.startswith(_SCHEME):
            return uri[len(_SCHEME) :].split("/", 1)[0] or None
    return None


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Reuse the CA's own SKI when present so AKI/SKI chain matching is exact even for foreign CAs.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_ca_public_key(ca_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_public_key(ca_cert: x509.Certificate) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    pub = ca_cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CertError(f"unsupported CA key type {type(pub).__name__}: only EC and RSA CAs can sign")
    return pub


def _load_ca(directory: Path) -> tuple[x509.Certificate, _CaKey]:
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    for path in (cert_path, key_path):
        if not path.is_file():
            raise CertError(f"no CA in {directory}: {path} does not exist (run `sidecar certs init` first)")
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read the CA in {directory}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CertError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertError(f"{key_path} is encrypted; the development CA key must be unencrypted") from None
    except ValueError:
        raise CertError(f"{key_path} is not a PEM private key") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertError(f"{cert_path} is not a CA certificate (BasicConstraints CA:TRUE is missing)")
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"{key_path}: unsupported key type {type(key).__name__}; expected EC or RSA")
    # A mismatched pair would sign certificates that no one can verify against ca.pem.
    if key.public_key().public_numbers() != _ca_public_key(cert).public_numbers():
        raise CertError(f"{key_path} does not belong to the certificate {cert_path}")
    return cert, key


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` via a same-directory temp file and rename.

    mkstemp creates the file 0600 with O_EXCL, so a key is never readable by others, not even for the
    moment between open and chmod, and a file already at `path` (perhaps 0644) is replaced, not reused.
    A crash mid-write leaves the old file intact instead of a truncated PEM.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                # Explicit mode: mkstemp gives 0600 regardless of umask; public certs are widened here.
                os.fchmod(fh.fileno(), mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc.strerror or exc}") from None
