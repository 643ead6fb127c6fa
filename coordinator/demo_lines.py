"""The demo's one-line-per-event story: what the coordinator decided about nodes (from its
audit log) and what task governance did (from the simulated cluster). Pure; the demo prints
these lines with ``--no-live`` and shows the latest in its live view."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coordinator.backends.local.sim_governor import SimLine

# task governance's reactions; admissions, arrivals and finishes would drown them
GOVERNANCE_KINDS = frozenset({"preempt", "requeue", "fail"})


def lifecycle_line(entry: Mapping[str, Any]) -> str | None:
    """``coordinator: gpu-node-009 -> pending-reboot (fault-needs-reboot: XID 79 on GPU 2 at
    14:02 UTC)`` for a lifecycle decision in the audit log, None for anything else."""
    if entry.get("kind") != "decision" or "target" not in (entry.get("details") or {}):
        return None
    dry = " (dry-run)" if entry.get("dry_run") else ""
    return f"coordinator: {entry.get('node')} -> {entry.get('action')}{dry} ({entry.get('reason')})"


def governance_line(line: SimLine) -> str | None:
    """``governance [sim 2.1h]: requeue research/llm-pretrain: ...`` for a reaction."""
    if line.kind not in GOVERNANCE_KINDS:
        return None
    return f"governance [sim {line.sim_s / 3600:.1f}h]: {line.kind} {line.subject}: {line.detail}"
