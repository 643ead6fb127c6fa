"""The coordinator's frozen settings, from flags and ``GPUWARDEN_*`` variables (flags win)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.backends.slurm.config import SlurmSettings, add_slurm_flags, slurm_settings
from coordinator.pki import lifetime
from coordinator.safety import MaxUnhealthy
from gpuwarden_common.broker import BrokerSettings, BrokerUrlError
from gpuwarden_common.flags import (
    BOOLEAN_SPELLINGS,
    HttpAddress,
    SettingsError,
    bool_setting,
    positive,
    read_secret,
)
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
    # node identity and admission (docs: deploy/kubernetes/README.md)
    ca_cert: Path | None = None
    ca_key: Path | None = None
    node_cert_lifetime_s: float = 24 * 3600.0
    agent_service_account: tuple[str, str] = ("gpuwarden", "gpuwarden-agent")
    webhook: HttpAddress | None = None
    webhook_names: tuple[str, ...] = ()
    webhook_configuration: str = "gpuwarden"
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
    p.add_argument("--broker", default=e("BROKER", "mqtt://localhost:1883"),
                   help="mqtt://HOST:PORT, or mqtts:// for TLS (default mqtt://localhost:1883)")
    p.add_argument("--username", default=e("USERNAME"),
                   help="broker user name (default: none)")
    p.add_argument("--password", default=e("PASSWORD"),
                   help="broker password; prefer --password-file or GPUWARDEN_PASSWORD "
                   "(default: none)")
    p.add_argument("--password-file", default=e("PASSWORD_FILE"),
                   help="file holding the broker password (default: none)")
    p.add_argument("--tls-ca", default=e("TLS_CA"),
                   help="CA bundle for the broker's certificate; implies TLS (default: the "
                   "system's)")
    p.add_argument("--tls-cert", default=e("TLS_CERT"),
                   help="client certificate, CN gpuwarden-coordinator for the shipped ACL; "
                   "with --tls-key (default: none)")
    p.add_argument("--tls-key", default=e("TLS_KEY"),
                   help="the client certificate's key (default: none)")
    p.add_argument("--cluster", default=e("CLUSTER", "default"),
                   help="cluster name in the MQTT topics (default default)")
    p.add_argument("--backend", default=e("BACKEND"), choices=BACKENDS,
                   help="where node marks and requeues go: kubernetes, slurm (drain, resume, "
                   "requeue with Slurm's commands) or local (marks.json only). Default: from "
                   "--kube (off: local, else kubernetes). When both are given --backend wins, "
                   "and --kube only says how to reach Kubernetes (default: from --kube)")
    p.add_argument("--kube", default=e("KUBE", "off"),
                   help="auto | in-cluster | kubeconfig:PATH | off; off uses the local "
                   "actuator, for clusters without Kubernetes (default off)")
    p.add_argument("--state", default=e("STATE", "/var/lib/gpuwarden"),
                   help="directory for the audit log and local state "
                   "(default /var/lib/gpuwarden)")
    p.add_argument("--http", default=e("HTTP", "127.0.0.1:8080"),
                   help="HOST:PORT for the API, dashboard and /metrics, or off "
                   "(default 127.0.0.1:8080)")
    p.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=e("DRY_RUN"),
                   help="decide and audit, but change nothing on any machine; the twin takes "
                   f"{BOOLEAN_SPELLINGS} (default: off)")
    p.add_argument("--max-unhealthy", default=e("MAX_UNHEALTHY", "10%"),
                   help="most nodes out of service at once, a count ('3') or a percent of "
                   "the fleet ('10%%'); a percent rounds down but never below 1 node, so one "
                   "broken node can always be taken out ('0' forbids any) (default 10%%)")
    p.add_argument("--max-remediations-per-minute",
                   default=e("MAX_REMEDIATIONS_PER_MINUTE", "10"),
                   help="rate limit on new removals from service (default 10)")
    p.add_argument("--offline-grace", default=e("OFFLINE_GRACE", "60"),
                   help="seconds of agent silence before a node is suspect (default 60)")
    p.add_argument("--recovery-stable", default=e("RECOVERY_STABLE", "300"),
                   help="seconds of healthy reports on a new boot before a node returns "
                   "(default 300)")
    p.add_argument("--embedded-broker", action=argparse.BooleanOptionalAction,
                   default=e("EMBEDDED_BROKER"),
                   help="run an MQTT broker in-process on the --broker URL's port "
                   "(default: off)")
    p.add_argument("--api-token-file", default=e("API_TOKEN_FILE"),
                   help="bearer token for POST /api/v1/nodes/*/clear|hold; without it they "
                   "answer 403 (default: none)")
    p.add_argument("--alert-webhook", default=e("ALERT_WEBHOOK"),
                   help="URL that receives JSON alerts (default: none, alerts are only "
                   "logged)")
    p.add_argument("--alert-shape", default=e("ALERT_SHAPE", "auto"),
                   choices=["auto", "slack", "alertmanager"],
                   help="alert body: slack, alertmanager, or auto (Alertmanager when the URL "
                   "ends in /api/v2/alerts) (default auto)")
    p.add_argument("--lease-name", default=e("LEASE_NAME", "gpuwarden-coordinator"),
                   help="the coordination.k8s.io Lease replicas elect a leader with "
                   "(default gpuwarden-coordinator)")
    p.add_argument("--lease-namespace",
                   default=e("LEASE_NAMESPACE", env.get("POD_NAMESPACE", "gpuwarden")),
                   help="the Lease's namespace; it must exist (default $POD_NAMESPACE, else "
                   "gpuwarden)")
    p.add_argument("--identity", default=e("IDENTITY", env.get("POD_NAME")),
                   help="this replica's name in the lease (default $POD_NAME, else the host "
                   "name)")
    p.add_argument("--policy", default=e("POLICY"),
                   help="governance policy YAML (teams, quotas, priority classes), enforced "
                   "on Kubernetes pods with --kube, reloaded live when the file changes "
                   "(default: none)")
    p.add_argument("--ca-cert", default=e("CA_CERT"),
                   help="the gpuwarden CA certificate (PEM): with --ca-key and --kube it signs "
                   "agents' broker certificates (CSR signer gpuwarden.io/mqtt-client), and it "
                   "issues this coordinator's own broker and webhook certificates "
                   "(default: none)")
    p.add_argument("--ca-key", default=e("CA_KEY"),
                   help="the CA's private key (PEM, ECDSA) (default: none)")
    p.add_argument("--node-cert-lifetime", default=e("NODE_CERT_LIFETIME", "24h"),
                   help="longest life of an agent's certificate, e.g. 90m, 24h, 7d; agents "
                   "renew at 70-90%% of it, and a removed node's access ends with it "
                   "(default 24h)")
    p.add_argument("--agent-service-account",
                   default=e("AGENT_SERVICE_ACCOUNT",
                             f"{env.get('POD_NAMESPACE', 'gpuwarden')}/gpuwarden-agent"),
                   help="NAMESPACE/NAME of the agents' ServiceAccount: only its pods get "
                   "certificates (default $POD_NAMESPACE/gpuwarden-agent, else "
                   "gpuwarden/gpuwarden-agent)")
    p.add_argument("--webhook", default=e("WEBHOOK", "off"),
                   help="HOST:PORT to serve the mutating admission webhook on (HTTPS, needs "
                   "--ca-cert and --ca-key), or off (default off)")
    p.add_argument("--webhook-service",
                   default=e("WEBHOOK_SERVICE",
                             f"gpuwarden-coordinator.{env.get('POD_NAMESPACE', 'gpuwarden')}.svc"),
                   help="the DNS name the API server calls the webhook by, for its "
                   "certificate (default gpuwarden-coordinator.$POD_NAMESPACE.svc)")
    p.add_argument("--webhook-configuration", default=e("WEBHOOK_CONFIGURATION", "gpuwarden"),
                   help="the MutatingWebhookConfiguration whose caBundle the coordinator "
                   "keeps set to its CA (default gpuwarden)")
    p.add_argument("--log-level", default=e("LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"],
                   help="debug | info | warning | error; JSON when not on a terminal "
                   "(default info)")
    p.add_argument("--max-clock-skew", default=e("MAX_CLOCK_SKEW", "30"),
                   help="seconds an agent's status or state may be stamped ahead of this "
                   "coordinator's clock; later ones are refused (default 30)")
    p.add_argument("--feed-refresh", default=e("FEED_REFRESH", "60"),
                   help="seconds between republishing every retained verdict and the cluster "
                   "summary, so the health feed is never stale or forged for long "
                   "(default 60)")
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
    if bool(args.ca_cert) != bool(args.ca_key):
        raise SettingsError("--ca-cert and --ca-key go together: give both or neither")
    webhook = HttpAddress.parse(args.webhook, "--webhook")
    if webhook is not None and not args.ca_cert:
        raise SettingsError("--webhook needs --ca-cert and --ca-key: its serving certificate "
                            "comes from that CA")
    try:
        node_cert_lifetime_s = lifetime(args.node_cert_lifetime, "--node-cert-lifetime")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    account_namespace, slash, account_name = args.agent_service_account.partition("/")
    if not slash or not account_namespace or not account_name:
        raise SettingsError(f"--agent-service-account {args.agent_service_account!r}: "
                            "expected NAMESPACE/NAME")
    backend = args.backend or ("local" if args.kube == "off" else "kubernetes")
    kube = "auto" if backend == "kubernetes" and args.kube == "off" else args.kube
    return CoordinatorSettings(
        broker=broker,
        cluster=args.cluster,
        kube=kube,
        state_dir=Path(args.state),
        http=HttpAddress.parse(args.http),
        dry_run=bool_setting(args.dry_run, "GPUWARDEN_DRY_RUN"),
        max_unhealthy=args.max_unhealthy,
        max_remediations_per_minute=int(
            positive(args.max_remediations_per_minute, "--max-remediations-per-minute",
                    integer=True)
        ),
        offline_grace_s=positive(args.offline_grace, "--offline-grace"),
        recovery_stable_s=positive(args.recovery_stable, "--recovery-stable"),
        embedded_broker=bool_setting(args.embedded_broker, "GPUWARDEN_EMBEDDED_BROKER"),
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
        ca_cert=Path(args.ca_cert) if args.ca_cert else None,
        ca_key=Path(args.ca_key) if args.ca_key else None,
        node_cert_lifetime_s=node_cert_lifetime_s,
        agent_service_account=(account_namespace, account_name),
        webhook=webhook,
        webhook_names=(args.webhook_service, f"{args.webhook_service}.cluster.local"),
        webhook_configuration=args.webhook_configuration,
        backend=backend,
        # only the chosen back end's flags are checked: a stray GPUWARDEN_SLURM_* is harmless
        slurm=slurm_settings(args) if backend == "slurm" else SlurmSettings(),
    )
