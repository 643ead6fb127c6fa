"""The governance policy in Slurm's own terms: ``gpuwarden policy export --slurm FILE``.

gpuwarden runs no second scheduler beside slurmctld. Where the policy has a Slurm
equivalent it becomes ``sacctmgr`` commands (an account per team, a QOS per priority class);
where it has none, the script says so in plain comments at its top, so an operator knows
what Slurm will not do. Pure: the text is built here, the CLI prints it, nothing runs.

| policy | Slurm |
|---|---|
| team | account ``<team>`` (the team's name; ``namespace`` is Kubernetes-only) |
| ``quota.gpus`` | the account's ``GrpTRES=gres/gpu=<quota>``: a cap, not a guarantee |
| ``fairShareWeight`` | the account's ``FairShare`` (0 becomes 1, the smallest share) |
| priority class | QOS ``<class>`` with ``Priority=<weight>`` |
| preemption | each QOS preempts the lower-weight ones (``PreemptMode=requeue``) |
| ``defaultGraceSeconds`` | each QOS's ``GraceTime`` |
| ``defaultPriorityClass`` | each account's ``DefaultQOS`` |
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from coordinator.governance.policy import IdleComputeAllocation, Policy

# what slurm.conf must say for the commands to matter (Slurm enforces none of it otherwise)
SLURM_CONF_NEEDS = (
    "AccountingStorageType=accounting_storage/slurmdbd",
    "AccountingStorageTRES=gres/gpu",
    "AccountingStorageEnforce=associations,limits,qos",
    "PriorityType=priority/multifactor",
    "PriorityWeightQOS=10000",
    "PreemptType=preempt/qos",
    "PreemptMode=REQUEUE",
)


@dataclass(frozen=True)
class SlurmExport:
    commands: tuple[tuple[str, ...], ...]  # argv of each sacctmgr command
    unsupported: tuple[str, ...]  # policy features Slurm has no equivalent for
    notes: tuple[str, ...]  # how the others are approximated

    def script(self, source: str) -> str:
        lines = [
            "#!/bin/sh",
            f"# gpuwarden governance policy {source}, in Slurm's terms (gpuwarden policy "
            "export --slurm).",
            "# Run it where sacctmgr reaches slurmdbd, as a Slurm administrator.",
            "#",
            "# No Slurm equivalent (Slurm will NOT do this):",
            *(f"#   - {item}" for item in self.unsupported),
            "#",
            "# Approximated:",
            *(f"#   - {item}" for item in self.notes),
            "#",
            "# slurm.conf must say (then restart slurmctld):",
            *(f"#   {item}" for item in SLURM_CONF_NEEDS),
            "set -e",
            *(_line(argv) for argv in self.commands),
            "",
        ]
        return "\n".join(lines)


def _line(argv: tuple[str, ...]) -> str:
    """One command of the script. sacctmgr's ``add`` fails ("Nothing new added") for what
    exists: guarded, so the script can run again after a policy change."""
    if argv[:3] != ("sacctmgr", "-i", "add"):
        return shlex.join(argv)
    kind, name = argv[3], argv[4]
    field = "account" if kind == "account" else "name"  # an account's name field is "account"
    exists = shlex.join(("sacctmgr", "-n", "-P", "show", kind, "where", f"name={name}",
                         f"format={field}"))  # fmt: skip
    return f"{exists} | grep -qx {shlex.quote(name)} || {shlex.join(argv)}"


def export_policy(policy: Policy) -> SlurmExport:
    classes = sorted(policy.priority_classes, key=lambda c: (-c.weight, c.name))
    commands: list[tuple[str, ...]] = []
    grace = round(policy.preemption.default_grace_seconds)
    # every QOS exists before any names another in Preempt= (sacctmgr refuses unknown ones)
    commands += [("sacctmgr", "-i", "add", "qos", cls.name) for cls in classes]
    for cls in classes:
        lower = [c.name for c in classes if c.weight < cls.weight]
        preempt = (f"Preempt={','.join(lower)}",) if lower else ()
        commands.append((
            "sacctmgr", "-i", "modify", "qos", "where", f"name={cls.name}", "set",
            f"Priority={cls.weight}", *preempt, "PreemptMode=requeue", f"GraceTime={grace}",
        ))  # fmt: skip
    qos_list = ",".join(c.name for c in classes)
    for team in policy.teams:
        commands.append(("sacctmgr", "-i", "add", "account", team.name,
                         f"Description=gpuwarden team {team.name}",
                         "Organization=gpuwarden"))  # fmt: skip
        settings = [f"GrpTRES=gres/gpu={team.quota.gpus}",
                    f"FairShare={max(1, team.fair_share_weight)}"]  # fmt: skip
        if qos_list:
            settings.append(f"QOS={qos_list}")
        if policy.default_priority_class:
            settings.append(f"DefaultQOS={policy.default_priority_class}")
        commands.append(("sacctmgr", "-i", "modify", "account", "where", f"name={team.name}",
                         "set", *settings))  # fmt: skip
    return SlurmExport(tuple(commands), _unsupported(policy), _notes(policy))


def _unsupported(policy: Policy) -> tuple[str, ...]:
    items = [
        "lending and borrowing (lending, borrowLimitPercent): a team is capped at its quota "
        "(GrpTRES); idle GPUs of one team are not lent to another. To let a team borrow, "
        "raise its GrpTRES by hand (quota + borrow limit) and accept that the lender's "
        "quota is then no longer guaranteed",
        "guaranteed quota: Slurm limits a team's GPUs but reserves none for it",
        f"victim order ({policy.preemption.victim_order.value}) and aging "
        "(agingBoostPerPreemption, agingMaxBoost): Slurm picks preemption victims by QOS "
        "and job priority",
        "requeue backoff (backoffSeconds, backoffMaxSeconds): Slurm decides when a requeued "
        "job runs again",
        f"victims per round (maxVictimsPerRound {policy.preemption.max_victims_per_round}): "
        "Slurm bounds a scheduling pass by the jobs it looks at (SchedulerParameters "
        "default_queue_depth, max_sched_time), not by the jobs it preempts",
    ]
    no_preempt = [t.name for t in policy.teams if not t.preempt_lower_priority]
    if no_preempt:
        items.append(
            "preemptLowerPriority per team: preemption follows the QOS in Slurm, so "
            f"{', '.join(no_preempt)} preempt lower classes too (give them QOS without "
            "Preempt= to stop it)"
        )
    return tuple(items)


def _notes(policy: Policy) -> tuple[str, ...]:
    idle = (
        "fair share: PriorityWeightFairshare > 0 in slurm.conf"
        if policy.idle_compute is IdleComputeAllocation.FAIR_SHARE
        else "first come, first served: PriorityWeightFairshare=0 in slurm.conf"
    )
    return (
        f"idle compute ({policy.idle_compute.value}): {idle}; fairShareWeight becomes the "
        "account's FairShare, which weighs all the team's jobs, not only borrowed ones",
        f"admission ({policy.admission.value}): Slurm orders jobs by its multifactor "
        "priority (QOS weight, fair share, age)",
        f"maxRequeues ({policy.requeue.max_requeues}): gpuwarden enforces it on Slurm "
        f"itself: run the coordinator with --slurm-max-requeues {policy.requeue.max_requeues}",
        f"preemption grace ({policy.preemption.default_grace_seconds:g} s): the QOS "
        "GraceTime, honoured by PreemptMode=REQUEUE",
    )
