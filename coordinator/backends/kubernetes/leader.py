"""Leader election on a coordination.k8s.io Lease: one replica acts, the standby takes over
within 15 s of the leader's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from coordinator.backends.kubernetes.client import (
    ApiCallObserver,
    KubeApi,
    LeaseNamespaceMissingError,
    RetryPolicy,
    describe,
    status_of,
    survivable,
    utc_now,
)

log = structlog.get_logger(__name__)


# --- leader election --------------------------------------------------------------------------


def leader_identity(pod_name: str) -> str:
    """Pod name plus a random suffix: a restarted pod never mistakes its predecessor's lease
    for its own."""
    return f"{pod_name}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaseSettings:
    """A standby takes over within ``lease_duration_s + retry_period_s`` of the leader's last
    renewal; the leader stops acting ``renew_deadline_s`` after its last successful renewal,
    which is before anyone else may acquire."""

    name: str = "gpuwarden-coordinator"
    namespace: str = "gpuwarden"
    # Worst case after the leader dies just after renewing: the standby saw that renewal up to
    # one jittered retry late (<= 2.4 s), waits the lease out, then tries at its next retry
    # (<= 2.4 s): 10 + 2.4 + 2.4 = 14.8 s, within the 15 s the coordinator promises.
    lease_duration_s: float = 10.0
    renew_deadline_s: float = 7.0
    retry_period_s: float = 2.0
    request_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("need 0 < retry_period_s < renew_deadline_s < lease_duration_s")


class _Attempt(enum.Enum):
    OURS = "ours"
    HELD_BY_OTHER = "held"
    FAILED = "failed"


class LeaderElector:
    """Lease-based leader election (client-go's algorithm).

    Expiry is judged by when *this* process last saw the lease record change, never by the
    holder's clock, so clock skew cannot make a standby steal a live lease. Run :meth:`run` as a
    task; :meth:`stop` steps down and releases the lease so a standby takes over at once.
    Cancelling :meth:`run` steps down without releasing (the standby waits out the lease).
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        identity: str,
        settings: LeaseSettings | None = None,
        *,
        on_gained: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        observer: ApiCallObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.settings = settings or LeaseSettings()
        self.leading = asyncio.Event()
        self._on_gained = on_gained
        self._on_lost = on_lost
        self._api = KubeApi(
            api_client,
            RetryPolicy(request_timeout_s=self.settings.request_timeout_s),
            observer,
            rng,
        )
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def run(self) -> None:
        self._running = True
        try:
            while not self._stopping.is_set():
                if self.is_leader:
                    await self._keep_leading()
                elif await self._attempt() is _Attempt.OURS:
                    self._gain()
                else:
                    jitter = 1 + 0.2 * self._api.rng.random()
                    await self._pause(self.settings.retry_period_s * jitter)
        finally:
            was_leader = self.is_leader
            self._lose()  # stop acting before anyone else can take over
            if was_leader and self._stopping.is_set():
                await self._release()
            self._finished.set()

    async def stop(self) -> None:
        """Step down, release the lease, and return when :meth:`run` has finished."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()

    async def _keep_leading(self) -> None:
        while self.is_leader and not self._stopping.is_set():
            await self._pause(self.settings.retry_period_s)
            if self._stopping.is_set():
                return
            budget = self._renewed_at + self.settings.renew_deadline_s - time.monotonic()
            result = _Attempt.FAILED
            if budget > 0:
                with contextlib.suppress(TimeoutError):
                    result = await asyncio.wait_for(self._attempt(), budget)
            if result is _Attempt.HELD_BY_OTHER:
                log.warning("kube.leader_lost", identity=self.identity, why="lease taken")
                self._lose()
            elif time.monotonic() - self._renewed_at >= self.settings.renew_deadline_s:
                log.warning("kube.leader_lost", identity=self.identity, why="renew deadline")
                self._lose()

    async def _attempt(self) -> _Attempt:
        """Acquire or renew once."""
        sent_at = time.monotonic()
        now = utc_now()
        try:
            lease = await self._api.once("get", "leases", self._read_lease)
        except ApiException as exc:
            if exc.status == 404:
                return await self._create(sent_at, now)
            log.info("kube.lease_read_failed", error=describe(exc))
            return _Attempt.FAILED
        except Exception as exc:
            if not survivable(exc):
                raise
            log.info("kube.lease_read_failed", error=describe(exc))
            return _Attempt.FAILED
        spec = lease.spec or k8s.V1LeaseSpec()
        self._note(spec)
        holder = spec.holder_identity
        if holder and holder != self.identity and not self._expired(spec):
            return _Attempt.HELD_BY_OTHER
        ours = holder == self.identity
        lease.spec = self._spec(
            acquired=spec.acquire_time if ours and spec.acquire_time else now,
            renewed=now,
            transitions=(spec.lease_transitions or 0) + (0 if ours or not holder else 1),
        )
        try:
            updated = await self._api.once("update", "leases", self._replace_lease(lease))
        except Exception as exc:
            if not survivable(exc):
                raise
            log.info("kube.lease_update_failed", error=describe(exc))
            return _Attempt.FAILED
        self._note(updated.spec)
        self._renewed_at = sent_at
        return _Attempt.OURS

    async def _create(self, sent_at: float, now: datetime) -> _Attempt:
        lease = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name=self.settings.name, namespace=self.settings.namespace),
            spec=self._spec(acquired=now, renewed=now, transitions=0),
        )
        try:
            created = await self._api.once(
                "create",
                "leases",
                lambda t: self._api.coordination.create_namespaced_lease(
                    self.settings.namespace, lease, _request_timeout=t
                ),
            )
        except Exception as exc:
            if status_of(exc) == 409:
                return _Attempt.HELD_BY_OTHER  # another candidate created it first
            if status_of(exc) == 404:
                # creating in a namespace that does not exist: say so once, at error level,
                # and stop, rather than retry every few seconds and never act
                namespace = self.settings.namespace
                message = (
                    f'the Lease namespace "{namespace}" does not exist: create it '
                    f"(kubectl create namespace {namespace}) or pass --lease-namespace "
                    "(GPUWARDEN_LEASE_NAMESPACE) naming one that does"
                )
                log.error("kube.lease_namespace_missing", namespace=namespace, error=message)
                raise LeaseNamespaceMissingError(message) from exc
            if not survivable(exc):
                raise
            log.info("kube.lease_create_failed", error=describe(exc))
            return _Attempt.FAILED
        self._note(created.spec)
        self._renewed_at = sent_at
        return _Attempt.OURS

    async def _release(self) -> None:
        """Hand the lease back: empty holder, so a standby acquires on its next try."""
        try:
            lease = await self._api.once("get", "leases", self._read_lease)
            spec = lease.spec or k8s.V1LeaseSpec()
            if spec.holder_identity != self.identity:
                return
            now = utc_now()
            lease.spec = k8s.V1LeaseSpec(
                holder_identity=None,
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=spec.lease_transitions,
            )
            await self._api.once("update", "leases", self._replace_lease(lease))
        except Exception as exc:
            if not survivable(exc):
                raise
            log.warning("kube.lease_release_failed", error=describe(exc))

    def _read_lease(self, timeout: float) -> k8s.V1Lease:
        return self._api.coordination.read_namespaced_lease(
            self.settings.name, self.settings.namespace, _request_timeout=timeout
        )

    def _replace_lease(self, lease: k8s.V1Lease) -> Callable[[float], k8s.V1Lease]:
        def request(timeout: float) -> k8s.V1Lease:
            return self._api.coordination.replace_namespaced_lease(
                self.settings.name, self.settings.namespace, lease, _request_timeout=timeout
            )

        return request

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> k8s.V1LeaseSpec:
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            # The field is whole seconds; rounding up never shortens what others must wait.
            lease_duration_seconds=math.ceil(self.settings.lease_duration_s),
            acquire_time=acquired,
            renew_time=renewed,
            lease_transitions=transitions,
        )

    def _note(self, spec: k8s.V1LeaseSpec | None) -> None:
        if spec is None:
            return
        record = (
            spec.holder_identity,
            spec.renew_time,
            spec.acquire_time,
            spec.lease_duration_seconds,
            spec.lease_transitions,
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()

    def _expired(self, spec: k8s.V1LeaseSpec) -> bool:
        duration = spec.lease_duration_seconds or self.settings.lease_duration_s
        return time.monotonic() > self._observed_at + duration

    def _gain(self) -> None:
        log.info("kube.leader_gained", identity=self.identity)
        self.leading.set()
        if self._on_gained is not None:
            self._on_gained()

    def _lose(self) -> None:
        if not self.leading.is_set():
            return
        self.leading.clear()
        if self._on_lost is not None:
            self._on_lost()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
