"""The gpuwarden CA: signs agents' client certificates, the coordinator's own client and
webhook certificates, and the broker's server certificate. Pure: keys and certificates in,
certificates out; reading the CA's files is the caller's business.

One CA for the whole MQTT and webhook trust domain keeps the operator's work to one Secret
(``gpuwarden-ca``, made by hand or by the cert-manager component). Leaves never outlive the CA,
and are backdated a minute so a node whose clock runs slightly behind accepts them at once.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gpuwarden_common.certs import PrivateKey, Validity, new_key, pem_of, utc

BACKDATE_S = 60.0
PublicKey = ec.EllipticCurvePublicKey


class CaError(ValueError):
    """The CA's certificate or key is unusable; the message says which and why."""


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: PrivateKey

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise CaError(f"not a PEM certificate and key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError("the CA key must be an EC key (ECDSA P-256, as the docs make it)")
        if key.public_key().public_numbers() != _ec_public(certificate).public_numbers():
            raise CaError("the CA key does not belong to the CA certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            raise CaError("the CA certificate has no basicConstraints CA:TRUE") from None
        if not constraints.value.ca:
            raise CaError("the CA certificate is not a CA (basicConstraints CA:FALSE)")
        return cls(certificate, key)

    @classmethod
    def from_files(cls, cert: Path, key: Path) -> CertificateAuthority:
        try:
            return cls.from_pem(cert.read_bytes(), key.read_bytes())
        except OSError as exc:
            raise CaError(f"cannot read {exc.filename}: {exc.strerror}") from None

    @classmethod
    def create(cls, name: str = "gpuwarden CA", lifetime_s: float = 10 * 365 * 86400,
               now: float | None = None) -> CertificateAuthority:
        """A new self-signed CA (tests, and a fallback the docs do not need)."""
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = (time.time() if now is None else now) - BACKDATE_S
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(utc(start))
            .not_valid_after(utc(start + lifetime_s))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @property
    def pem(self) -> bytes:
        return pem_of(self.certificate)

    @property
    def validity(self) -> Validity:
        return Validity.of(self.certificate)

    def issue_client(self, public_key: PublicKey, common_name: str, lifetime_s: float,
                     now: float | None = None) -> x509.Certificate:
        """A client certificate (clientAuth) for CN = ``common_name``, nothing else in it."""
        return self._issue(public_key, common_name, lifetime_s, now, server_names=())

    def issue_server(self, public_key: PublicKey, names: Sequence[str], lifetime_s: float,
                     now: float | None = None) -> x509.Certificate:
        """A server certificate (serverAuth) for DNS names (and IP addresses) ``names``."""
        if not names:
            raise ValueError("a server certificate needs at least one name")
        return self._issue(public_key, names[0], lifetime_s, now, server_names=names)

    def _issue(self, public_key: PublicKey, common_name: str, lifetime_s: float,
               now: float | None, server_names: Sequence[str]) -> x509.Certificate:
        start = (time.time() if now is None else now) - BACKDATE_S
        end = min(start + BACKDATE_S + lifetime_s, self.validity.not_after)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(utc(start))
            .not_valid_after(utc(end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in server_names]),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256())


def issue_key_and_certificate(ca: CertificateAuthority, *, common_name: str | None = None,
                              server_names: Sequence[str] = (), lifetime_s: float,
                              now: float | None = None) -> tuple[bytes, bytes]:
    """A new key and its certificate, both PEM: the coordinator's own client and serving
    certificates, and the broker's."""
    key = new_key()
    if server_names:
        certificate = ca.issue_server(key.public_key(), server_names, lifetime_s, now)
    elif common_name:
        certificate = ca.issue_client(key.public_key(), common_name, lifetime_s, now)
    else:
        raise ValueError("give common_name (client) or server_names (server)")
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    return key_bytes, pem_of(certificate)


def _ec_public(certificate: x509.Certificate) -> PublicKey:
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CaError("the CA certificate's key must be an EC key")
    return public


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def lifetime(text: str, flag: str) -> float:
    """``90m``, ``24h``, ``7d`` or plain seconds -> seconds (the CSR API's floor is 10 minutes)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a duration like 90m, 24h or 7d") from None
    if seconds < 600:
        raise ValueError(f"{flag} {text!r}: at least 10m (the CSR API's shortest lifetime)")
    return seconds


__all__ = [
    "BACKDATE_S",
    "CaError",
    "CertificateAuthority",
    "issue_key_and_certificate",
    "lifetime",
]
