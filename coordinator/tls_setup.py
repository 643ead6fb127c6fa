"""What the coordinator issues itself from the gpuwarden CA at start (``--ca-cert``/``--ca-key``):
its broker client certificate (CN gpuwarden-coordinator) when ``--tls-cert`` names none, and the
admission webhook's serving certificate. Both live only in a private temporary directory for
the life of the process, so no Secret holds them and a restart renews them.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from coordinator.pki import CaError, CertificateAuthority, issue_key_and_certificate
from coordinator.settings import CoordinatorSettings
from gpuwarden_common.certs import COORDINATOR_CN
from gpuwarden_common.daemon import StartupError

# a process that lives longer is restarted by nothing: a year, renewed at every start
OWN_CERT_LIFETIME_S = 365 * 86400.0


def load_ca(settings: CoordinatorSettings) -> CertificateAuthority | None:
    if settings.ca_cert is None or settings.ca_key is None:
        return None
    try:
        return CertificateAuthority.from_files(settings.ca_cert, settings.ca_key)
    except CaError as exc:
        raise StartupError(f"--ca-cert/--ca-key: {exc}") from None


def private_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="gpuwarden-tls-"))


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def with_own_broker_certificate(
    settings: CoordinatorSettings, ca: CertificateAuthority, directory: Path
) -> CoordinatorSettings:
    """Settings whose broker uses a certificate from ``ca`` unless the flags name one."""
    if settings.broker.tls_cert is not None:
        return settings
    key, cert = issue_key_and_certificate(ca, common_name=COORDINATOR_CN,
                                          lifetime_s=OWN_CERT_LIFETIME_S)
    broker = dataclasses.replace(
        settings.broker,
        tls=True,
        tls_cert=str(_write(directory, "coordinator.crt", cert)),
        tls_key=str(_write(directory, "coordinator.key", key)),
        tls_ca=settings.broker.tls_ca or str(_write(directory, "ca.crt", ca.pem)),
    )
    return dataclasses.replace(settings, broker=broker)


def webhook_certificate(
    settings: CoordinatorSettings, ca: CertificateAuthority, directory: Path
) -> tuple[Path, Path]:
    key, cert = issue_key_and_certificate(ca, server_names=settings.webhook_names,
                                          lifetime_s=OWN_CERT_LIFETIME_S)
    return _write(directory, "webhook.crt", cert), _write(directory, "webhook.key", key)
