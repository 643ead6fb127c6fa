"""The agent's broker identity with no per-node hand work (``--tls-bootstrap``).

At start the agent uses the certificate it kept on the host if it is its own (CN = its node
name) and not yet due for renewal; otherwise it makes a new key, asks for a certificate for
CN = its node name (the CSR API on Kubernetes: :mod:`agent.kube_csr`), and waits until the
coordinator signs or refuses it. Then it renews at 70-90% of each certificate's lifetime
(kubelet's rule), every time with a new key.

Key and certificate live in ONE file, replaced by an atomic rename: the publisher reads it at
every (re)connect, and two files could be read half old, half new. The CA arrives with the
certificate (the last certificate of the signed chain) and is written beside it. A renewed
certificate is used from the next connection on; the broker does not re-check a certificate
on a connection already open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from gpuwarden_common.backoff import backoff_delay
from gpuwarden_common.certs import (
    Validity,
    common_name,
    csr_pem,
    key_pem,
    new_key,
    pem_of,
    split_pem_chain,
)

log = structlog.get_logger("agent.identity")


class CertificateRefused(Exception):
    """The signer denied the request (or marked it failed); the message says why."""


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes  # the leaf first, the CA last


class CsrClient(Protocol):
    """Where certificate requests go (the Kubernetes CSR API in production)."""

    async def request(self, node: str, csr_pem: bytes, lifetime_s: int) -> str:
        """Submit a request; returns its name."""
        ...

    async def outcome(self, name: str) -> Issued | None:
        """The signed chain, None while pending; raises :class:`CertificateRefused`."""
        ...


@dataclass(frozen=True)
class IdentityFiles:
    node_pem: Path  # key + certificate, what --tls-cert and --tls-key both name
    ca: Path

    def write(self, key: bytes, chain: bytes) -> None:
        certificates = split_pem_chain(chain)
        leaf, ca = certificates[0], certificates[-1]
        self.node_pem.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _atomic_write(self.ca, pem_of(ca), 0o644)
        _atomic_write(self.node_pem, key + pem_of(leaf), 0o600)

    def current(self, node: str) -> Validity | None:
        """The kept certificate's validity, when it exists, parses and is this node's."""
        try:
            leaf = split_pem_chain(self.node_pem.read_bytes())[0]
        except (OSError, ValueError):
            return None
        if common_name(leaf.subject) != node or not self.ca.is_file():
            return None
        return Validity.of(leaf)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class NodeIdentity:
    def __init__(
        self,
        node: str,
        files: IdentityFiles,
        client: CsrClient,
        *,
        lifetime_s: int = 24 * 3600,
        poll_s: float = 1.0,
        request_timeout_s: float = 300.0,
        registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.node = node
        self.files = files
        self._client = client
        self._lifetime_s = lifetime_s
        self._poll_s = poll_s
        self._request_timeout_s = request_timeout_s
        self._jitter = (rng or random.Random()).random()
        self.validity: Validity | None = None
        self.expiry = Gauge(
            "gpuwarden_agent_certificate_expiry_timestamp_seconds",
            "When this agent's broker client certificate expires (epoch seconds)",
            registry=registry,
        )
        self.requests = Counter(
            "gpuwarden_agent_certificate_requests",
            "Certificate requests this agent made, by outcome (issued, denied, failed)",
            ["outcome"], registry=registry,
        )

    @property
    def renew_at(self) -> float:
        return 0.0 if self.validity is None else self.validity.renew_at(self._jitter)

    async def ensure(self, stop: asyncio.Event | None = None) -> None:
        """A usable certificate on disk before the publisher starts: the kept one, or a new
        one, asked for until it comes (or ``stop``)."""
        kept = self.files.current(self.node)
        if kept is not None and kept.usable_at(time.time()) and time.time() < kept.renew_at(
            self._jitter
        ):
            self._adopt(kept)
            log.info("certificate kept", node=self.node, expires=kept.not_after)
            return
        attempt = 0
        while stop is None or not stop.is_set():
            if await self._try_renew():
                return
            await _sleep(backoff_delay(attempt, 2.0, 60.0), stop)
            attempt += 1

    async def keep_renewed(self, stop: asyncio.Event) -> None:
        """Renew at :attr:`renew_at`; after a failure try again soon, while the old one lasts."""
        attempt = 0
        while not stop.is_set():
            wait = self.renew_at - time.time() if attempt == 0 else backoff_delay(
                attempt - 1, 5.0, 300.0)
            await _sleep(max(0.0, wait), stop)
            if stop.is_set():
                return
            attempt = 0 if await self._try_renew() else attempt + 1

    async def _try_renew(self) -> bool:
        try:
            await self.renew()
        except CertificateRefused as exc:
            self.requests.labels("denied").inc()
            log.error("certificate request denied", node=self.node, reason=str(exc))
            return False
        except Exception as exc:  # the API server or the signer unreachable: retry
            self.requests.labels("failed").inc()
            log.warning("certificate request failed", node=self.node,
                        error=f"{type(exc).__name__}: {exc}")
            return False
        self.requests.labels("issued").inc()
        return True

    async def renew(self) -> Validity:
        """One request: new key, CSR, wait for the signature, write the files."""
        key = new_key()
        name = await self._client.request(self.node, csr_pem(key, self.node), self._lifetime_s)
        deadline = time.monotonic() + self._request_timeout_s
        while (issued := await self._client.outcome(name)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not signed within {self._request_timeout_s:g} s; "
                                   "is the coordinator running with its CA?")
            await asyncio.sleep(self._poll_s)
        self.files.write(key_pem(key), issued.chain_pem)
        validity = self.files.current(self.node)
        if validity is None:
            raise CertificateRefused(f"{name}: the signed certificate is not for {self.node}")
        self._adopt(validity)
        log.info("certificate issued", node=self.node, request=name,
                 expires=validity.not_after)
        return validity

    def _adopt(self, validity: Validity) -> None:
        self.validity = validity
        self.expiry.set(validity.not_after)


async def _sleep(seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
