"""The agent's one frozen settings object, built from flags and ``GPUWARDEN_*`` variables.

Every flag ``--some-flag`` has the environment twin ``GPUWARDEN_SOME_FLAG``; a flag given on
the command line wins. Only ``__main__`` calls :func:`parse_settings`.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class AgentSettings:
    broker: BrokerSettings
    cluster: str
    node: str
    interval_s: float
    http: HttpAddress | None
    spool_dir: Path | None
    event_ack_timeout_s: float
    gpu_backend: str
    sim_gpus: int
    sim_processes_per_gpu: int
    sim_scenario: Path | None
    xid_table: Path | None
    xid_history: Path | None
    kmsg_path: Path | None
    # the host's /proc, where each GPU process's cgroup names its owner; None: attribution off
    proc_root: Path | None
    expected_gpus: int | None
    instance_type: str | None
    disk_path: str
    once: bool
    log_level: str
    # where the broker certificate comes from: off (the --tls-* files as given), or the
    # Kubernetes CSR API (in-cluster | kubeconfig:PATH), kept at --tls-cert / --tls-ca
    tls_bootstrap: str = "off"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: str | None = None) -> str | None:
        return env.get(f"GPUWARDEN_{name}", default)

    p = argparse.ArgumentParser(
        prog="gpuwarden-agent",
        description="gpuwarden node agent: GPU and host health over MQTT. "
        "Every flag has a GPUWARDEN_<FLAG> environment twin.",
    )
    p.add_argument(
        "--broker",
        default=e("BROKER", "mqtt://localhost:1883"),
        help="mqtt://host:port or mqtts://host:port (default %(default)s)",
    )
    p.add_argument("--username", default=e("USERNAME"))
    p.add_argument(
        "--password",
        default=e("PASSWORD"),
        help="prefer GPUWARDEN_PASSWORD or --password-file over a visible flag",
    )
    p.add_argument("--password-file", default=e("PASSWORD_FILE"))
    p.add_argument("--tls-ca", default=e("TLS_CA"), help="CA bundle; implies TLS")
    p.add_argument("--tls-cert", default=e("TLS_CERT"), help="client certificate (with --tls-key)")
    p.add_argument("--tls-key", default=e("TLS_KEY"))
    p.add_argument(
        "--tls-bootstrap",
        default=e("TLS_BOOTSTRAP", "off"),
        help="get and renew the broker client certificate (CN = the node name) through the "
        "Kubernetes CSR API: in-cluster | kubeconfig:PATH | off; kept, key and certificate in "
        f"one file, at --tls-cert (default {DEFAULT_NODE_PEM}) with the CA at --tls-ca "
        f"(default {DEFAULT_NODE_CA}) (default off)",
    )
    p.add_argument("--cluster", default=e("CLUSTER", "default"))
    p.add_argument(
        "--node",
        default=e("NODE", env.get("NODE_NAME")),
        help="node name (default: $NODE_NAME, else the host name)",
    )
    p.add_argument("--interval", default=e("INTERVAL", "10"), help="seconds between snapshots")
    p.add_argument(
        "--http",
        default=e("HTTP", "0.0.0.0:9402"),
        help="HOST:PORT for /healthz and /metrics, or off (default %(default)s)",
    )
    p.add_argument(
        "--spool",
        default=e("SPOOL"),
        help="directory for fault events the coordinator has not acknowledged yet "
        "(default: memory only, lost if the agent restarts)",
    )
    p.add_argument(
        "--event-ack-timeout",
        default=e("EVENT_ACK_TIMEOUT", "10"),
        help="seconds to wait for the coordinator's acknowledgement of an event before "
        "sending it again; the wait doubles up to 120 s (default %(default)s)",
    )
    p.add_argument("--gpu-backend", default=e("GPU_BACKEND", "nvml"), choices=["nvml", "sim"])
    p.add_argument("--sim-gpus", default=e("SIM_GPUS", "8"))
    p.add_argument(
        "--sim-processes-per-gpu",
        default=e("SIM_PROCESSES_PER_GPU", "1"),
        help="worker processes of each simulated pod on each of its GPUs (default %(default)s)",
    )
    p.add_argument(
        "--sim-scenario",
        default=e("SIM_SCENARIO"),
        help="YAML list of {at, gpu, fault[, xid]} steps for the sim backend",
    )
    p.add_argument("--xid-table", default=e("XID_TABLE"), help="YAML overriding the XID table")
    p.add_argument(
        "--xid-history",
        default=e("XID_HISTORY"),
        help="JSON file remembering reboot-class faults across reboots "
        "(default: <spool>/xid-history.json with --spool, else memory)",
    )
    p.add_argument(
        "--kmsg",
        default=e("KMSG", "/dev/kmsg"),
        help="kernel log to follow for NVRM Xid lines, or off",
    )
    p.add_argument(
        "--proc-root",
        default=e("PROC_ROOT", "/proc"),
        help="the host's /proc, read to attribute each GPU process to its pod, Slurm job or "
        "the host (in a container: needs hostPID), or off (default %(default)s)",
    )
    p.add_argument(
        "--expected-gpus",
        default=e("EXPECTED_GPUS"),
        help="GPUs this node should have (default: as many as NVML sees at start)",
    )
    p.add_argument("--instance-type", default=e("INSTANCE_TYPE"))
    p.add_argument("--disk-path", default=e("DISK_PATH", "/"))
    p.add_argument(
        "--once",
        action=argparse.BooleanOptionalAction,
        default=e("ONCE"),
        help=f"collect once, print the state JSON, exit (twin: {BOOLEAN_SPELLINGS})",
    )
    p.add_argument(
        "--log-level", default=e("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"]
    )
    return p


DEFAULT_NODE_PEM = "/var/lib/gpuwarden/tls/node.pem"
DEFAULT_NODE_CA = "/var/lib/gpuwarden/tls/ca.crt"


def _bootstrap_paths(args: argparse.Namespace) -> None:
    """With --tls-bootstrap the agent writes the certificate files itself: one file for key
    and certificate (replaced atomically, never read half renewed) and the CA beside it."""
    if args.tls_bootstrap == "off":
        return
    if args.tls_bootstrap != "in-cluster" and not args.tls_bootstrap.startswith("kubeconfig:"):
        raise SettingsError(f"--tls-bootstrap {args.tls_bootstrap!r}: expected in-cluster, "
                            "kubeconfig:PATH or off")
    args.tls_cert = args.tls_cert or args.tls_key or DEFAULT_NODE_PEM
    args.tls_key = args.tls_key or args.tls_cert
    args.tls_ca = args.tls_ca or DEFAULT_NODE_CA
    if args.tls_cert != args.tls_key:
        raise SettingsError("--tls-bootstrap keeps key and certificate in one file: give "
                            "--tls-cert and --tls-key the same path (or neither)")


def parse_settings(argv: Sequence[str], env: Mapping[str, str]) -> AgentSettings:
    args = build_parser(env).parse_args(list(argv))
    _bootstrap_paths(args)
    password = (
        read_secret(args.password_file, "--password-file") if args.password_file
        else args.password
    )
    try:
        broker = BrokerSettings.from_url(
            args.broker,
            username=args.username,
            password=password,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except BrokerUrlError as exc:
        raise SettingsError(f"--broker: {exc}") from None
    node = args.node or socket.gethostname().split(".")[0]
    for flag, value in (("--node", node), ("--cluster", args.cluster)):
        if not valid_name(value):
            raise SettingsError(
                f"{flag} {value!r}: use letters, digits, '.', '_' or '-' (no '/', '+', '#')"
            )
    spool = Path(args.spool) if args.spool else None
    history = (
        Path(args.xid_history)
        if args.xid_history
        else (spool / "xid-history.json" if spool else None)
    )
    return AgentSettings(
        broker=broker,
        cluster=args.cluster,
        node=node,
        interval_s=positive(args.interval, "--interval"),
        http=HttpAddress.parse(args.http),
        spool_dir=spool,
        event_ack_timeout_s=positive(args.event_ack_timeout, "--event-ack-timeout"),
        gpu_backend=args.gpu_backend,
        sim_gpus=int(positive(args.sim_gpus, "--sim-gpus", integer=True)),
        sim_processes_per_gpu=int(
            positive(args.sim_processes_per_gpu, "--sim-processes-per-gpu", integer=True)
        ),
        sim_scenario=Path(args.sim_scenario) if args.sim_scenario else None,
        xid_table=Path(args.xid_table) if args.xid_table else None,
        xid_history=history,
        kmsg_path=None if args.kmsg in {"", "off"} else Path(args.kmsg),
        proc_root=None if args.proc_root in {"", "off"} else Path(args.proc_root),
        expected_gpus=(
            int(positive(args.expected_gpus, "--expected-gpus", integer=True))
            if args.expected_gpus
            else None
        ),
        instance_type=args.instance_type,
        disk_path=args.disk_path,
        once=bool_setting(args.once, "GPUWARDEN_ONCE"),
        tls_bootstrap=args.tls_bootstrap,
        log_level=args.log_level,
    )
