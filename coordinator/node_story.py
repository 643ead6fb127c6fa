"""A node's story as the API tells it: its current findings (with first seen and count), its
lifecycle history from the audit log, and the marks it carries on the cluster.

Pure JSON shaping; the daemon supplies the model's record, the audit records and the
actuator's facts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordinator.actuators import NodeFacts
from coordinator.audit import AuditKind, AuditRecord
from coordinator.findings import SeenFinding
from coordinator.lifecycle import Lifecycle, mark_for

Json = dict[str, Any]

HISTORY_LIMIT = 50


def findings_json(seen: Iterable[SeenFinding]) -> list[Json]:
    """The ``findings`` of ``GET /api/v1/nodes/{name}``: each check's conclusion as the agent
    sends it, plus ``first_seen`` (the coordinator's clock) and ``count`` (occurrences)."""
    return [
        {"check": f.check, "severity": f.severity.value, "code": f.code, "message": f.message,
         "action": f.action.value, "gpu_index": f.gpu_index, "unknown": f.unknown,
         "first_seen": f.first_seen, "count": f.count}
        for f in seen
    ]  # fmt: skip


def history_json(records: Iterable[AuditRecord]) -> list[Json]:
    """Lifecycle transitions, operator commands and failed actions of one node, oldest first
    (``records`` come newest first, as :meth:`AuditLog.query` returns them)."""
    story: list[Json] = []
    for rec in records:
        event = _event(rec)
        if event is not None:
            story.append({"ts": rec.ts, "event": event, "actor": rec.actor,
                          "reason": rec.reason, "dry_run": rec.dry_run})  # fmt: skip
        if len(story) == HISTORY_LIMIT:
            break
    story.reverse()
    return story


def _event(rec: AuditRecord) -> str | None:
    if rec.kind is AuditKind.DECISION and "target" in rec.details:
        return f"{rec.details.get('source', '?')} -> {rec.details['target']}"
    if rec.kind is AuditKind.OPERATOR:
        return f"operator {rec.action}"
    if rec.kind is AuditKind.ACTION_FINISHED and rec.outcome != "ok":
        return f"{rec.action} {rec.outcome}"
    return None  # task decisions, successful actions: the transitions already say them


def marks_json(facts: NodeFacts, lifecycle: Lifecycle, actuator: str) -> Json:
    """``GET /api/v1/nodes/{name}/marks``: what the cluster shows now beside what the node's
    lifecycle asks for, so an operator sees a mark that did not land (or someone else's)."""
    expected = mark_for(lifecycle)
    return {
        "actuator": actuator,
        "exists": facts.exists,
        "ready": facts.ready,
        "label": None if facts.mark is None else facts.mark.value,
        "expected_label": None if expected is None else expected.value,
        "cordoned": facts.unschedulable,
        "cordoned_by_gpuwarden": facts.cordoned_by_us,
    }
