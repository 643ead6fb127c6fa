"""The Slurm back end: DESIGN.md's Slurm contract, through Slurm's own commands.

- :class:`SlurmActuator` (:mod:`.actuator`): marks are drains whose reason names the fault,
  the lifecycle and the decision (:mod:`.nodes`); recovery resumes only gpuwarden's drains;
  node facts, the node list and GPU counts come from ``sinfo --json``.
- :class:`SlurmRequeue` (:mod:`.requeue`, decisions in :mod:`.jobs`): the jobs of a node
  taken out are signalled, given their grace, then requeued or cancelled.
- :mod:`.policy_export`: the governance policy in Slurm's terms (``sacctmgr``).

Only this package runs Slurm commands (:mod:`.commands`; tests/test_backend_boundaries.py).
"""

from __future__ import annotations

from coordinator.audit import AuditLog
from coordinator.backends.slurm.actuator import SlurmActuator
from coordinator.backends.slurm.commands import SlurmCommands, SlurmUnavailable
from coordinator.backends.slurm.config import SlurmSettings
from coordinator.backends.slurm.names import NodeMapError, NodeNames
from coordinator.backends.slurm.requeue import RequeueSettings, SlurmRequeue

__all__ = [
    "SlurmActuator",
    "SlurmCommands",
    "SlurmRequeue",
    "SlurmSettings",
    "SlurmSetupError",
    "SlurmUnavailable",
    "build",
]


class SlurmSetupError(RuntimeError):
    """The back end cannot start; the message says what to fix."""


def build(
    settings: SlurmSettings, audit: AuditLog, *, actor: str, dry_run: bool
) -> tuple[SlurmActuator, SlurmRequeue]:
    """The actuator and the requeue of one coordinator, sharing one command runner."""
    commands = SlurmCommands(bin_dir=settings.bin_dir, conf=settings.conf,
                             timeout_s=settings.timeout_s)  # fmt: skip
    missing = commands.missing()
    if missing:
        where = f"in --slurm-bin {settings.bin_dir}" if settings.bin_dir else "on PATH"
        raise SlurmSetupError(
            f"--backend slurm: {', '.join(missing)} not found {where}; install Slurm's client "
            "commands (Debian: apt-get install slurm-client) or point --slurm-bin at them"
        )
    try:
        names = NodeNames.load(settings.node_map) if settings.node_map else NodeNames()
    except NodeMapError as exc:
        raise SlurmSetupError(f"--slurm-node-map {exc}") from None
    actuator = SlurmActuator(commands, names=names, reboot=settings.reboot)

    async def held_out() -> list[str]:
        return [facts.name for facts in await actuator.list_marked()]

    async def drained(slurm_node: str) -> bool:
        return any(n.name == slurm_node and n.drained for n in await actuator.read_nodes())

    requeue = SlurmRequeue(
        commands, audit,
        RequeueSettings(signal=settings.requeue_signal, grace_s=settings.requeue_grace_s,
                        max_requeues=settings.max_requeues, actor=actor, dry_run=dry_run),
        names=names, held_out=held_out, drained=drained,
    )  # fmt: skip
    return actuator, requeue
