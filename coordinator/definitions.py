"""What each capacity number counts, said once: the model counts by these rules, the API
serves these words, the dashboard shows them as tooltips, the CLI as labels, and the docs
quote them (a test checks that they still do).

The three GPU buckets put every GPU in exactly one of them, so they add up to the total. A
node's GPUs all move to "out for recovery" when the node is taken out of service, whatever
each GPU's own health: a red node shows there, not under "unhealthy, in service".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    key: str  # the field of the API answer that carries the number
    label: str  # what a person reads
    definition: str


GPUS_TOTAL = Term(
    "gpus_total", "GPUs total",
    "Every GPU the agents report or expect, on every node the coordinator knows.",
)
GPU_BUCKETS = (
    Term(
        "gpus_healthy", "GPUs healthy",
        "GPUs of in-service nodes that report healthy or degraded: where work can run.",
    ),
    Term(
        "gpus_unhealthy", "GPUs unhealthy, in service",
        "GPUs of in-service nodes that are unhealthy, unknown, lost, or expected but not "
        "reported; their node is not (yet) out for recovery.",
    ),
    Term(
        "gpus_pending_recovery", "GPUs out for recovery",
        "Every GPU of a node out of service (unschedulable, pending reboot or replacement, "
        "recovering, held), whatever its own health.",
    ),
)

TEAM_TERMS = (
    Term("quota", "Quota", "GPUs the policy guarantees the team."),
    Term(
        "guarantee", "Guaranteed",
        "The quota, scaled down in proportion when healthy capacity is below the sum of "
        "quotas.",
    ),
    Term("allocated", "Allocated",
         "GPUs held by the team's admitted, running and still-preempting tasks."),
    Term("in_use", "In use", "GPUs of the team's running tasks."),
    Term("borrowed", "Borrowed", "GPUs the team holds beyond its guarantee."),
    Term("lent", "Lent", "GPUs of the team's idle guarantee that other teams borrow now."),
)
UNASSIGNED = Term(
    "unassigned", "Unassigned",
    "Healthy GPUs outside every team's guarantee; borrowing is served from them first. "
    "Borrowed = lent + unassigned in use.",
)


def terms_json() -> dict[str, dict[str, str]]:
    """``definitions`` in ``GET /api/v1/cluster``: label and definition by field."""
    every = (GPUS_TOTAL, *GPU_BUCKETS, *TEAM_TERMS, UNASSIGNED)
    return {t.key: {"label": t.label, "definition": t.definition} for t in every}
