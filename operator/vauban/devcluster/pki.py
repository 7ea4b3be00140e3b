"""Certificates and keys of the local control plane, made fresh for each start.

ECDSA P-256 throughout: keys are generated in milliseconds, and every component accepts them
(the service-account tokens are then signed with ES256).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files, all under one folder."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_public: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    """Further client certificates by name: (certificate, key)."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


LOOPBACK = x509.SubjectAlternativeName(
    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
)
"""The names of a server on 127.0.0.1."""


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certificate_authority(
    common_name: str, *, path_length: int | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA, valid from 5 minutes ago for `VALIDITY`."""
    now = datetime.datetime.now(datetime.UTC)
    key = new_key()
    ca_name = name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .sign(key, hashes.SHA256())
    )
    return cert, key


def leaf_certificate(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate signed by `ca` for one extended key usage (serverAuth or clientAuth),
    with a fresh key, valid exactly as long as the CA."""
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        # Python 3.13 verifies strictly (VERIFY_X509_STRICT): the key identifiers are needed.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def create(
    directory: Path,
    *,
    service_ip: str,
    extra_ips: Iterable[str] = (),
    clients: Mapping[str, tuple[str, str | None]] | None = None,
) -> Pki:
    """A CA, the apiserver's serving certificate (for 127.0.0.1, the Service IP and
    `extra_ips`), an admin client certificate (group system:masters), the service-account
    signing key pair, and a client certificate for each of `clients` (name: (common name,
    organization)), e.g. a kubelet's system:node:<name> in system:nodes."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = certificate_authority("vauban-local-ca")
    server, server_key = leaf_certificate(
        ca,
        ca_key,
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName(
            [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address(service_ip)),
                *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.DNSName("kubernetes.default.svc.cluster.local"),
            ]
        ),
    )
    admin, admin_key = leaf_certificate(
        ca, ca_key, name("vauban-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    service_account = new_key()
    issued: dict[str, tuple[Path, Path]] = {}
    for client, (common_name, organization) in (clients or {}).items():
        cert, key = leaf_certificate(
            ca, ca_key, name(common_name, organization), ExtendedKeyUsageOID.CLIENT_AUTH
        )
        issued[client] = (directory / f"{client}.crt", directory / f"{client}.key")
        write_cert(issued[client][0], cert)
        write_key(issued[client][1], key)

    pki = Pki(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "apiserver.crt",
        server_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        service_account_key=directory / "sa.key",
        service_account_public=directory / "sa.pub",
        clients=issued,
    )
    write_cert(pki.ca_cert, ca)
    write_cert(pki.server_cert, server)
    write_key(pki.server_key, server_key)
    write_cert(pki.admin_cert, admin)
    write_key(pki.admin_key, admin_key)
    write_key(pki.service_account_key, service_account)
    pki.service_account_public.write_bytes(
        service_account.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
