"""The Slurm back end's flags (``--slurm-*``, each with its ``GPUWARDEN_SLURM_*`` twin) and
the frozen settings built from them. ``coordinator.settings`` adds them to the coordinator's
parser; nothing here runs a command or reads a file."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coordinator.backends.slurm.nodes import RebootMode
from gpuwarden_common.flags import SettingsError, positive


@dataclass(frozen=True)
class SlurmSettings:
    bin_dir: Path | None = None
    conf: Path | None = None
    node_map: Path | None = None
    timeout_s: float = 10.0
    reboot: RebootMode = RebootMode.OFF
    requeue_signal: str = "USR1"
    requeue_grace_s: float = 60.0
    max_requeues: int = 3


def add_slurm_flags(p: argparse.ArgumentParser, e: Callable[[str, str | None], str | None]) -> None:
    g = p.add_argument_group("Slurm back end (--backend slurm)")
    g.add_argument("--slurm-bin", default=e("SLURM_BIN", None), metavar="DIR",
                   help="directory of scontrol, sinfo, squeue and scancel (default: PATH)")
    g.add_argument("--slurm-conf", default=e("SLURM_CONF", None), metavar="FILE",
                   help="slurm.conf of the cluster (default: Slurm's own, $SLURM_CONF or "
                   "/etc/slurm/slurm.conf)")
    g.add_argument("--slurm-node-map", default=e("SLURM_NODE_MAP", None), metavar="FILE",
                   help="YAML lines 'agent-name: slurm-NodeName' where the two differ "
                   "(default: the same names)")
    g.add_argument("--slurm-timeout", default=e("SLURM_TIMEOUT", "10"), metavar="SECONDS",
                   help="deadline of each Slurm command; one that passes it counts as failed "
                   "and is retried with backoff (default %(default)s)")
    g.add_argument("--slurm-reboot", default=e("SLURM_REBOOT", "off"),
                   choices=[m.value for m in RebootMode],
                   help="pending-reboot also runs 'scontrol reboot ASAP nextstate=DOWN|RESUME' "
                   "(Slurm's RebootProgram reboots the node). down: the node stays out until "
                   "gpuwarden has seen it healthy; resume: Slurm returns it at once "
                   "(default %(default)s)")
    g.add_argument("--slurm-requeue-signal", default=e("SLURM_REQUEUE_SIGNAL", "USR1"),
                   metavar="SIGNAL",
                   help="signal a job on a node taken out gets before its grace: 'checkpoint "
                   "now' (default %(default)s)")
    g.add_argument("--slurm-requeue-grace", default=e("SLURM_REQUEUE_GRACE", "60"),
                   metavar="SECONDS",
                   help="seconds between that signal and the requeue (default %(default)s)")
    g.add_argument("--slurm-max-requeues", default=e("SLURM_MAX_REQUEUES", "3"), metavar="N",
                   help="a job Slurm has restarted N times is cancelled, not requeued "
                   "(default %(default)s)")


def slurm_settings(args: argparse.Namespace) -> SlurmSettings:
    return SlurmSettings(
        bin_dir=_existing(args.slurm_bin, "--slurm-bin", directory=True),
        conf=_existing(args.slurm_conf, "--slurm-conf", directory=False),
        node_map=_existing(args.slurm_node_map, "--slurm-node-map", directory=False),
        timeout_s=positive(args.slurm_timeout, "--slurm-timeout"),
        reboot=RebootMode(args.slurm_reboot),
        requeue_signal=signal_name(args.slurm_requeue_signal),
        requeue_grace_s=_at_least_zero(args.slurm_requeue_grace, "--slurm-requeue-grace"),
        max_requeues=int(_at_least_zero(args.slurm_max_requeues, "--slurm-max-requeues",
                                        integer=True)),
    )


def signal_name(text: str) -> str:
    """``USR1``, ``SIGUSR1`` or ``10`` -> ``USR1``, the form ``scancel --signal`` takes."""
    name = text.strip().upper()
    try:
        sig = signal.Signals(int(name)) if name.isdigit() else signal.Signals[
            name if name.startswith("SIG") else f"SIG{name}"
        ]
    except (KeyError, ValueError):
        raise SettingsError(f"--slurm-requeue-signal {text!r}: not a signal; give a name such "
                            "as USR1 (the usual 'checkpoint now') or TERM") from None  # fmt: skip
    if sig in {signal.SIGKILL, signal.SIGSTOP}:
        raise SettingsError(f"--slurm-requeue-signal {text!r}: a job cannot catch it to "
                            "checkpoint; use USR1")  # fmt: skip
    return sig.name.removeprefix("SIG")


def _existing(value: str | None, flag: str, *, directory: bool) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if directory and not path.is_dir():
        raise SettingsError(f"{flag} {value}: no such directory; give the directory that "
                            "holds scontrol (e.g. /usr/bin), or leave it out to use PATH")
    if not directory and not path.is_file():
        raise SettingsError(f"{flag} {value}: no such file")
    return path


def _at_least_zero(value: str, flag: str, *, integer: bool = False) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise SettingsError(f"{flag} {value!r}: expected {kind}, 0 or more") from None
    if number < 0:
        raise SettingsError(f"{flag} {value!r}: must be 0 or more")
    return number
