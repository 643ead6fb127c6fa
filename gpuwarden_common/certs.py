"""Node identity on the broker: the facts both sides share, and the pure certificate work.

An agent's broker identity is a client certificate whose CN is its Kubernetes node name (the
broker's ACL turns the CN into the MQTT user and lets it write only its own topics). On
Kubernetes the agent asks for it through the CSR API with :data:`SIGNER_NAME`; the coordinator
approves only a request made by an agent pod that runs on that very node, and signs it
(``coordinator/csr_review.py``, ``coordinator/backends/kubernetes/csr.py``). Nothing here does I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The signerName of agents' CertificateSigningRequests: the coordinator signs these and no
# other (kube-controller-manager's signers ignore a name outside kubernetes.io/).
SIGNER_NAME: Final = "gpuwarden.io/mqtt-client"
# The coordinator's CN in the broker ACL: never issued to a node.
COORDINATOR_CN: Final = "gpuwarden-coordinator"
# A certificate is renewed once this share of its lifetime has passed (jittered per agent up to
# RENEW_JITTER more, so a fleet started together does not renew together): kubelet's rule.
RENEW_AT: Final = 0.7
RENEW_JITTER: Final = 0.2

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    """A fresh P-256 key: a new one for every request, so rotation rotates the key too."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def csr_pem(key: PrivateKey, common_name: str) -> bytes:
    """A PKCS#10 request for CN = ``common_name`` and nothing else."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def split_pem_chain(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order (raises ValueError when there is none)."""
    return x509.load_pem_x509_certificates(pem)


def pem_of(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Validity:
    """When a certificate starts and stops being valid, as epoch seconds."""

    not_before: float
    not_after: float

    @classmethod
    def of(cls, certificate: x509.Certificate) -> Validity:
        return cls(
            certificate.not_valid_before_utc.timestamp(),
            certificate.not_valid_after_utc.timestamp(),
        )

    @property
    def lifetime_s(self) -> float:
        return max(0.0, self.not_after - self.not_before)

    def renew_at(self, jitter: float) -> float:
        """When to renew: ``RENEW_AT`` of the lifetime plus ``jitter`` (0-1) of
        ``RENEW_JITTER``."""
        share = RENEW_AT + RENEW_JITTER * min(max(jitter, 0.0), 1.0)
        return self.not_before + share * self.lifetime_s

    def usable_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


def renewal_jitter(rng: random.Random | None = None) -> float:
    return (rng or random.Random()).random()


def utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)
