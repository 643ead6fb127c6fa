"""Task governance: team quotas, lending and borrowing, priorities, preemption, requeue.

Pure decisions over a model free of Kubernetes types; the coordinator maps pods to
:class:`Task` and carries the decisions out, and :mod:`.simcluster` runs the same engine
against a simulated cluster.
"""

from coordinator.governance.decisions import (
    Admit,
    Decision,
    Decisions,
    Fail,
    Preempt,
    PreemptCause,
    Requeue,
)
from coordinator.governance.engine import decide, effective_priority
from coordinator.governance.fairshare import scaled_guarantees
from coordinator.governance.observe import (
    ClassSummary,
    TeamSummary,
    class_summaries,
    team_summaries,
)
from coordinator.governance.placement import FreeGpus, best_fit
from coordinator.governance.policy import (
    AdmissionOrder,
    IdleComputeAllocation,
    Lending,
    Policy,
    PolicyChange,
    PolicyError,
    PriorityClass,
    Quota,
    RequeueSettings,
    Team,
    VictimOrder,
    diff,
    load_policy,
    parse_policy,
)
from coordinator.governance.requeue import on_admission_timeout, on_node_fault
from coordinator.governance.tasks import (
    Capacity,
    GovernanceState,
    InvalidTransitionError,
    RequeueCause,
    Task,
    TaskState,
    task_key,
)

__all__ = [
    "AdmissionOrder",
    "Admit",
    "Capacity",
    "ClassSummary",
    "Decision",
    "Decisions",
    "Fail",
    "FreeGpus",
    "GovernanceState",
    "IdleComputeAllocation",
    "InvalidTransitionError",
    "Lending",
    "Policy",
    "PolicyChange",
    "PolicyError",
    "Preempt",
    "PreemptCause",
    "PriorityClass",
    "Quota",
    "Requeue",
    "RequeueCause",
    "RequeueSettings",
    "Task",
    "TaskState",
    "Team",
    "TeamSummary",
    "VictimOrder",
    "best_fit",
    "class_summaries",
    "decide",
    "diff",
    "effective_priority",
    "load_policy",
    "on_admission_timeout",
    "on_node_fault",
    "parse_policy",
    "scaled_guarantees",
    "task_key",
    "team_summaries",
]
