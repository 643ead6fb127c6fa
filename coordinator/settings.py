"""The coordinator's frozen settings, from flags and ``GPUWARDEN_*`` variables (flags win)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.backends.slurm.config import SlurmSettings, add_slurm_flags, slurm_settings
from coordinator.safety import MaxUnhealthy
from gpuwarden_common.broker import BrokerSettings, BrokerUrlError
from gpuwarden_common.flags import HttpAddress, SettingsError, positive, read_secret
from gpuwarden_common.wire import valid_name

__all__ = ["CoordinatorSettings", "SettingsError", "parse_settings"]


@dataclass(frozen=True)
class CoordinatorSettings:
    broker: BrokerSettings
    cluster: str
    kube: str
    state_dir: Path
    http: HttpAddress | None
    dry_run: bool
    max_unhealthy: str
    max_remediations_per_minute: int
    offline_grace_s: float
    recovery_stable_s: float
    embedded_broker: bool
    api_token: str | None
    alert_webhook: str | None
    alert_shape: str
    lease_name: str
    lease_namespace: str
    identity: str
    policy: Path | None
    log_level: str
    max_clock_skew_s: float = 30.0
    feed_refresh_s: float = 60.0
    # kubernetes | slurm | local: where marks go (--backend, else from --kube)
    backend: str = "local"
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


BACKENDS = ("kubernetes", "slurm", "local")


def build_parser(
    env: Mapping[str, str], prog: str = "gpuwarden coordinator"
) -> argparse.ArgumentParser:
    def e(name: str, default: str | None = None) -> str | None:
        return env.get(f"GPUWARDEN_{name}", default)

    p = argparse.ArgumentParser(
        prog=prog,
        description="gpuwarden coordinator: fleet health, recovery of broken instances, task "
        "governance. Every flag has a GPUWARDEN_<FLAG> environment twin.",
    )
    p.add_argument("--broker", default=e("BROKER", "mqtt://localhost:1883"))
    p.add_argument("--username", default=e("USERNAME"))
    p.add_argument("--password", default=e("PASSWORD"))
    p.add_argument("--password-file", default=e("PASSWORD_FILE"))
    p.add_argument("--tls-ca", default=e("TLS_CA"))
    p.add_argument("--tls-cert", default=e("TLS_CERT"))
    p.add_argument("--tls-key", default=e("TLS_KEY"))
    p.add_argument("--cluster", default=e("CLUSTER", "default"))
    p.add_argument("--backend", default=e("BACKEND"), choices=BACKENDS,
                   help="where node marks and requeues go: kubernetes, slurm (drain, resume, "
                   "requeue with Slurm's commands) or local (marks.json only). Default: from "
                   "--kube (off: local, else kubernetes). When both are given --backend wins, "
                   "and --kube only says how to reach Kubernetes")
    p.add_argument("--kube", default=e("KUBE", "off"),
                   help="auto | in-cluster | kubeconfig:PATH | off (default %(default)s: "
                   "the local actuator, for clusters without Kubernetes)")
    p.add_argument("--state", default=e("STATE", "/var/lib/gpuwarden"),
                   help="directory for the audit log and local state (default %(default)s)")
    p.add_argument("--http", default=e("HTTP", "127.0.0.1:8080"),
                   help="HOST:PORT for the API, dashboard and /metrics, or off")
    p.add_argument("--dry-run", action="store_true",
                   default=e("DRY_RUN", "") in {"1", "true"},
                   help="decide and audit, but change nothing on any machine")
    p.add_argument("--max-unhealthy", default=e("MAX_UNHEALTHY", "10%"),
                   help="most nodes out at once, as a count or a percent (default %(default)s)")
    p.add_argument("--max-remediations-per-minute",
                   default=e("MAX_REMEDIATIONS_PER_MINUTE", "10"))
    p.add_argument("--offline-grace", default=e("OFFLINE_GRACE", "60"),
                   help="seconds of agent silence before a node is suspect")
    p.add_argument("--recovery-stable", default=e("RECOVERY_STABLE", "300"),
                   help="seconds of healthy reports on a new boot before a node returns")
    p.add_argument("--embedded-broker", action="store_true",
                   default=e("EMBEDDED_BROKER", "") in {"1", "true"},
                   help="run an MQTT broker in-process on the --broker URL's port")
    p.add_argument("--api-token-file", default=e("API_TOKEN_FILE"),
                   help="bearer token for POST /api/v1/nodes/*/clear|hold (off without it)")
    p.add_argument("--alert-webhook", default=e("ALERT_WEBHOOK"))
    p.add_argument("--alert-shape", default=e("ALERT_SHAPE", "auto"),
                   choices=["auto", "slack", "alertmanager"])
    p.add_argument("--lease-name", default=e("LEASE_NAME", "gpuwarden-coordinator"))
    p.add_argument("--lease-namespace",
                   default=e("LEASE_NAMESPACE", env.get("POD_NAMESPACE", "gpuwarden")))
    p.add_argument("--identity", default=e("IDENTITY", env.get("POD_NAME")),
                   help="this replica's name in the lease (default $POD_NAME, else host name)")
    p.add_argument("--policy", default=e("POLICY"),
                   help="governance policy YAML (teams, quotas, priority classes)")
    p.add_argument("--log-level", default=e("LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--max-clock-skew", default=e("MAX_CLOCK_SKEW", "30"),
                   help="seconds an agent's status or state may be stamped ahead of this "
                   "coordinator's clock; later ones are refused (default %(default)s)")
    p.add_argument("--feed-refresh", default=e("FEED_REFRESH", "60"),
                   help="seconds between republishing every retained verdict and the cluster "
                   "summary, so the health feed is never stale or forged for long "
                   "(default %(default)s)")
    add_slurm_flags(p, e)
    return p


def parse_settings(
    argv: Sequence[str], env: Mapping[str, str], prog: str = "gpuwarden coordinator"
) -> CoordinatorSettings:
    args = build_parser(env, prog).parse_args(list(argv))
    password = (
        read_secret(args.password_file, "--password-file") if args.password_file
        else args.password
    )
    try:
        broker = BrokerSettings.from_url(
            args.broker, username=args.username, password=password, tls_ca=args.tls_ca,
            tls_cert=args.tls_cert, tls_key=args.tls_key,
        )
    except BrokerUrlError as exc:
        raise SettingsError(f"--broker: {exc}") from None
    if not valid_name(args.cluster):
        raise SettingsError(f"--cluster {args.cluster!r}: letters, digits, '.', '_', '-' only")
    try:
        MaxUnhealthy.parse(args.max_unhealthy)
    except ValueError as exc:
        raise SettingsError(f"--max-unhealthy: {exc}") from None
    if args.kube not in {"auto", "in-cluster", "off"} and not args.kube.startswith("kubeconfig:"):
        raise SettingsError(
            f"--kube {args.kube!r}: expected auto, in-cluster, kubeconfig:PATH or off"
        )
    backend = args.backend or ("local" if args.kube == "off" else "kubernetes")
    kube = "auto" if backend == "kubernetes" and args.kube == "off" else args.kube
    return CoordinatorSettings(
        broker=broker,
        cluster=args.cluster,
        kube=kube,
        state_dir=Path(args.state),
        http=HttpAddress.parse(args.http),
        dry_run=bool(args.dry_run),
        max_unhealthy=args.max_unhealthy,
        max_remediations_per_minute=int(
            positive(args.max_remediations_per_minute, "--max-remediations-per-minute",
                    integer=True)
        ),
        offline_grace_s=positive(args.offline_grace, "--offline-grace"),
        recovery_stable_s=positive(args.recovery_stable, "--recovery-stable"),
        embedded_broker=bool(args.embedded_broker),
        api_token=(
            read_secret(args.api_token_file, "--api-token-file") if args.api_token_file
            else None
        ),
        alert_webhook=args.alert_webhook or None,
        alert_shape=args.alert_shape,
        lease_name=args.lease_name,
        lease_namespace=args.lease_namespace,
        identity=args.identity or socket.gethostname().split(".")[0],
        policy=Path(args.policy) if args.policy else None,
        log_level=args.log_level,
        max_clock_skew_s=positive(args.max_clock_skew, "--max-clock-skew"),
        feed_refresh_s=positive(args.feed_refresh, "--feed-refresh"),
        backend=backend,
        # only the chosen back end's flags are checked: a stray GPUWARDEN_SLURM_* is harmless
        slurm=slurm_settings(args) if backend == "slurm" else SlurmSettings(),
    )
