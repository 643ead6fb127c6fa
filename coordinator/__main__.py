"""``gpuwarden coordinator`` / ``python -m coordinator``: wire the pieces and run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry

from coordinator.actuators import Actuator
from coordinator.api import build_app
from coordinator.audit import AuditEntry, AuditKind, AuditLog
from coordinator.backends.local.actuator import LocalActuator
from coordinator.daemon import Coordinator, Leadership
from coordinator.embedded_broker import EmbeddedBroker
from coordinator.governance.policy import Policy, PolicyError
from coordinator.pki import CertificateAuthority
from coordinator.policy_watch import PolicyFile, PolicyWatch, one_line
from coordinator.settings import CoordinatorSettings, parse_settings
from coordinator.task_governance import TaskGovernance
from coordinator.tls_setup import (
    load_ca,
    private_dir,
    webhook_certificate,
    with_own_broker_certificate,
)
from coordinator.webhook_server import AdmissionWebhook, serving_context
from gpuwarden_common import sdnotify
from gpuwarden_common.daemon import StartupError, run_daemon, stop_on_signals
from gpuwarden_common.http import serve

if TYPE_CHECKING:
    from coordinator.backends.kubernetes.governor import KubeGovernor

log = structlog.get_logger("coordinator")

SHUTDOWN_DEADLINE_S = 10.0


def static_dir() -> str | None:
    """The packaged dashboard, if this install has it."""
    path = Path(__file__).parent / "static"
    return str(path) if (path / "index.html").is_file() else None


def _kube_parts(settings: CoordinatorSettings) -> tuple[Actuator, Any, Any]:
    """The node actuator, the leader elector and their API client (for task governance)."""
    # imported here: only the Kubernetes path needs the client
    from coordinator.backends.kubernetes.actuator import KubeActuator  # noqa: PLC0415
    from coordinator.backends.kubernetes.client import KubeConfigError, kube_client_from  # noqa: PLC0415
    from coordinator.backends.kubernetes.leader import LeaderElector, LeaseSettings, leader_identity  # noqa: PLC0415

    try:
        client = kube_client_from(settings.kube)
    except KubeConfigError as exc:
        raise StartupError(str(exc)) from None
    actuator = KubeActuator(client, event_namespace=settings.lease_namespace, close_client=True)
    elector = LeaderElector(
        client, leader_identity(settings.identity),
        LeaseSettings(name=settings.lease_name, namespace=settings.lease_namespace),
    )
    return actuator, elector, client


def _slurm_parts(settings: CoordinatorSettings, audit: AuditLog) -> tuple[Actuator, TaskGovernance]:
    """The Slurm actuator, and the requeue of jobs on nodes taken out (Slurm's own
    scheduler does the rest of governance)."""
    from coordinator.backends import slurm  # noqa: PLC0415 - only the Slurm path needs it

    try:
        return slurm.build(settings.slurm, audit, actor=settings.identity,
                           dry_run=settings.dry_run)  # fmt: skip
    except slurm.SlurmSetupError as exc:
        raise StartupError(str(exc)) from None


def _policy_file(settings: CoordinatorSettings) -> PolicyFile | None:
    """The ``--policy`` file, validated whole before anything starts."""
    if settings.policy is None:
        return None
    try:
        return PolicyFile.load(settings.policy)
    except PolicyError as exc:
        raise StartupError(f"--policy {one_line(exc)}") from None


def _kube_governor(
    settings: CoordinatorSettings,
    client: Any,
    policy: Policy,
    audit: AuditLog,
    registry: CollectorRegistry,
) -> KubeGovernor:
    # imported here: only the Kubernetes path needs the client
    from coordinator.backends.kubernetes.governor import GovernorSettings, KubeGovernor  # noqa: PLC0415
    from coordinator.backends.kubernetes.pod_api import KubePods  # noqa: PLC0415

    pods = KubePods(client)  # the client is shared; the actuator closes it
    return KubeGovernor(
        pods,
        policy,
        audit,
        GovernorSettings(actor=settings.identity, dry_run=settings.dry_run),
        registry=registry,
    )


def _identity_tasks(
    settings: CoordinatorSettings, client: Any, ca: CertificateAuthority, elector: Any,
    registry: CollectorRegistry,
) -> list[asyncio.Task[Any]]:
    """On Kubernetes with a CA: sign agents' certificates while leading, and keep the
    webhook configuration's caBundle on this CA."""
    # imported here: only the Kubernetes path needs the client
    from coordinator.backends.kubernetes.csr import NodeCertificateSigner, SignerSettings  # noqa: PLC0415

    signer = NodeCertificateSigner(
        client, ca,
        SignerSettings(settings.agent_service_account,
                       max_lifetime_s=settings.node_cert_lifetime_s, actor=settings.identity),
        leading=lambda: bool(elector.is_leader), registry=registry,
    )
    tasks = [asyncio.create_task(signer.run(), name="node-certificate-signer")]
    if settings.webhook is not None:
        tasks.append(asyncio.create_task(_set_ca_bundle(settings, client, ca),
                                         name="webhook-ca-bundle"))
    return tasks


async def _set_ca_bundle(settings: CoordinatorSettings, client: Any,
                         ca: CertificateAuthority) -> None:
    from coordinator.backends.kubernetes.client import describe  # noqa: PLC0415
    from coordinator.backends.kubernetes.webhook import patch_ca_bundle  # noqa: PLC0415

    try:
        await patch_ca_bundle(client, settings.webhook_configuration, ca.pem)
    except Exception as exc:
        # not fatal: the other replica may succeed, and the API server then trusts both
        log.error("webhook.ca_bundle_failed", configuration=settings.webhook_configuration,
                  error=describe(exc))


async def run(settings: CoordinatorSettings, stop: asyncio.Event) -> None:
    policy_file = _policy_file(settings)
    ca = load_ca(settings)
    tls_dir = private_dir() if ca is not None else None
    if ca is not None and tls_dir is not None:
        settings = with_own_broker_certificate(settings, ca, tls_dir)
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        audit = AuditLog(settings.state_dir / "audit.sqlite3")
    except OSError as exc:
        raise StartupError(
            f"--state {settings.state_dir}: cannot write there ({exc}); pick a writable directory"
        ) from None
    broker = None
    if settings.embedded_broker:
        broker = EmbeddedBroker(settings.broker.host, settings.broker.port)
        try:
            await broker.start()
        except OSError as exc:
            raise StartupError(
                f"--embedded-broker: cannot listen on {settings.broker.host}:"
                f"{settings.broker.port} ({exc}); is another broker running there?"
            ) from None
    elector = None
    actuator: Actuator
    registry = CollectorRegistry()
    governance: TaskGovernance | None = None
    policy_watch: PolicyWatch | None = None
    webhook = (
        None if settings.webhook is None
        else AdmissionWebhook(policy_file.policy if policy_file else None, registry)
    )
    identity_tasks: list[asyncio.Task[Any]] = []
    if settings.backend == "local":
        actuator = LocalActuator(settings.state_dir / "marks.json")
        if policy_file is not None:
            log.warning("--policy is checked but not enforced: task governance governs "
                        "Kubernetes pods and --kube is off", policy=str(policy_file.path))
    elif settings.backend == "slurm":
        actuator, governance = _slurm_parts(settings, audit)
        if policy_file is not None:
            log.warning("--policy is checked but not enforced by gpuwarden on Slurm: Slurm "
                        "schedules; give it the policy with 'gpuwarden policy export --slurm'",
                        policy=str(policy_file.path))  # fmt: skip
    else:
        actuator, elector, client = _kube_parts(settings)
        if policy_file is not None:
            governor = _kube_governor(settings, client, policy_file.policy, audit, registry)
            governance = governor
            policy_watch = PolicyWatch(policy_file, _fan_out(governor, webhook), audit,
                                       actor=settings.identity, registry=registry)
        if ca is not None:
            identity_tasks = _identity_tasks(settings, client, ca, elector, registry)
    leadership: Leadership | None = elector
    coordinator = Coordinator(settings, actuator=actuator, audit=audit, leadership=leadership,
                              governance=governance, registry=registry)
    audit.record(AuditEntry(kind=AuditKind.SYSTEM, actor=settings.identity, action="start",
                            reason="coordinator started",
                            details={"dry_run": settings.dry_run, "kube": settings.kube,
                                     "backend": settings.backend,
                                     "policy": str(settings.policy) if settings.policy else None,
                                     "governance": governance is not None}))
    runner = None
    if settings.http is not None:
        app = build_app(coordinator, coordinator.registry, api_token=settings.api_token,
                        static_dir=static_dir())
        runner = await serve(app, settings.http)
    webhook_runner = None
    if webhook is not None and settings.webhook is not None and ca is not None and tls_dir:
        cert, key = webhook_certificate(settings, ca, tls_dir)
        webhook_runner = await serve(webhook.app(), settings.webhook, "--webhook",
                                     serving_context(cert, key))
    log.info("coordinator started", cluster=settings.cluster, broker=settings.broker.display,
             actuator=actuator.name, dry_run=settings.dry_run,
             http=None if settings.http is None else f"{settings.http.host}:{settings.http.port}")
    tasks = [asyncio.create_task(coordinator.run(), name="coordinator"), *identity_tasks]
    if policy_watch is not None:
        tasks.append(asyncio.create_task(policy_watch.run(), name="policy-watch"))
    election = (
        None if elector is None
        else asyncio.create_task(_elect(elector), name="leader-election")
    )
    sdnotify.ready()
    watchdog = asyncio.create_task(sdnotify.run_watchdog(lambda: True), name="sd-watchdog")
    try:
        waiter = asyncio.create_task(stop.wait())
        watched = [*tasks, waiter] + ([election] if election is not None else [])
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            failure = None if t is waiter else t.exception()
            if failure is not None:
                raise failure
    finally:
        sdnotify.stopping()
        watchdog.cancel()
        # stop acting first, then release the lease so the standby takes over at once: the
        # other order lets two replicas act for a moment
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if elector is not None and election is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(elector.stop(), SHUTDOWN_DEADLINE_S / 2)
            election.cancel()
            await asyncio.gather(election, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        if webhook_runner is not None:
            await webhook_runner.cleanup()
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)
        await actuator.close()
        if broker is not None:
            await broker.stop()
        audit.record(AuditEntry(kind=AuditKind.SYSTEM, actor=settings.identity, action="stop",
                                reason="coordinator stopped"))
        audit.close()


def _fan_out(governor: Any, webhook: AdmissionWebhook | None) -> Callable[[Policy], None]:
    """One reloaded policy for the governor and the webhook alike."""
    def apply(policy: Policy) -> None:
        governor.set_policy(policy)
        if webhook is not None:
            webhook.set_policy(policy)

    return apply


async def _elect(elector: Any) -> None:
    """Run the election; a cluster configuration no retry can fix stops the daemon (exit 2)."""
    from coordinator.backends.kubernetes.client import KubeConfigError  # noqa: PLC0415

    try:
        await elector.run()
    except KubeConfigError as exc:
        raise StartupError(str(exc)) from None


async def _amain(settings: CoordinatorSettings) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    await run(settings, stop)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "gpuwarden coordinator") -> int:
    return run_daemon(
        prog,
        lambda: parse_settings(sys.argv[1:] if argv is None else argv, os.environ, prog),
        _amain,
    )


if __name__ == "__main__":
    sys.exit(main(prog="python -m coordinator"))
