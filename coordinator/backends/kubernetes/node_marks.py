"""Node marks, planned purely: what a mark or an unmark must write on a node object (cordon
with our claim, taint, label, the decision behind the mark, the GPUHealthy condition), and
what the cluster says about a node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.actuators import MarkFact, NodeFacts, NodeMark
from coordinator.backends.kubernetes.contract import (
    CORDONED_BY_ANNOTATION,
    FACT_ANNOTATION,
    FACT_MESSAGE_LIMIT,
    GPU_CONDITION,
    HEALTH_LABEL,
    INSTANCE_TYPE_LABELS,
    UNHEALTHY_TAINT_EFFECT,
    UNHEALTHY_TAINT_KEY,
)

Json = dict[str, Any]


# --- nodes: pure planning ---------------------------------------------------------------------


def meta_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return meta_of(obj).get("labels") or {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return meta_of(obj).get("annotations") or {}


def _node_condition(node: Mapping[str, Any], condition_type: str) -> Mapping[str, Any] | None:
    conditions = (node.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == condition_type), None)


def _is_our_taint(taint: Mapping[str, Any]) -> bool:
    return taint.get("key") == UNHEALTHY_TAINT_KEY and taint.get("effect") == UNHEALTHY_TAINT_EFFECT


@dataclass(frozen=True)
class NodeChange:
    """What one mark or unmark must write; both None when the node already says it."""

    node_patch: Json | None = None
    condition: Json | None = None
    # mark_healthy lifted at least one unhealthy mark (worth a NodeRecovered event)
    lifted: bool = False

    @property
    def empty(self) -> bool:
        return self.node_patch is None and self.condition is None


def _condition_update(
    node: Mapping[str, Any], status: str, reason: str, message: str, now: str
) -> Json | None:
    current = _node_condition(node, GPU_CONDITION) or {}
    if (current.get("status"), current.get("reason"), current.get("message")) == (
        status,
        reason,
        message,
    ):
        return None
    # The transition time moves only when the status does (what kubectl describe shows).
    same_status = current.get("status") == status
    return {
        "type": GPU_CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": current.get("lastTransitionTime", now) if same_status else now,
    }


def fact_annotation(fact: MarkFact) -> str:
    return json.dumps(
        {"id": fact.id, "reason": fact.reason, "message": fact.message[:FACT_MESSAGE_LIMIT],
         "at": round(fact.at, 3)},
        sort_keys=True,
    )  # fmt: skip


def fact_of(node: Mapping[str, Any]) -> MarkFact | None:
    """The fact a node's annotation records; None when absent or unreadable (not ours)."""
    raw = annotations_of(node).get(FACT_ANNOTATION)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return MarkFact(
            id=str(data["id"]), reason=str(data["reason"]), message=str(data["message"]),
            at=float(data["at"]),
        )  # fmt: skip
    except (ValueError, TypeError, KeyError):
        return None


def fact_id_of(node: Mapping[str, Any]) -> str | None:
    fact = fact_of(node)
    return None if fact is None else fact.id


def plan_mark_unhealthy(
    node: Mapping[str, Any], mark: NodeMark, fact: MarkFact, *, owner: str, now: str
) -> NodeChange:
    """Cordon (claiming it only when we are the ones cordoning), taint, label, the fact,
    condition."""
    spec = node.get("spec") or {}
    metadata: Json = {}
    spec_patch: Json = {}
    annotations: Json = {}
    if _labels(node).get(HEALTH_LABEL) != mark.value:
        metadata["labels"] = {HEALTH_LABEL: mark.value}
    if not spec.get("unschedulable"):
        spec_patch["unschedulable"] = True
        annotations[CORDONED_BY_ANNOTATION] = owner
    if fact_id_of(node) != fact.id:
        annotations[FACT_ANNOTATION] = fact_annotation(fact)
    if annotations:
        metadata["annotations"] = annotations
    taints = list(spec.get("taints") or [])
    if not any(_is_our_taint(t) for t in taints):
        # Node taints are not merged by key: the whole list goes, guarded by resourceVersion.
        spec_patch["taints"] = [
            *taints,
            {"key": UNHEALTHY_TAINT_KEY, "effect": UNHEALTHY_TAINT_EFFECT},
        ]
    return NodeChange(
        node_patch=_node_patch(node, metadata, spec_patch),
        condition=_condition_update(node, "False", fact.reason, fact.message, now),
    )


def plan_mark_healthy(node: Mapping[str, Any], fact: MarkFact, *, now: str) -> NodeChange:
    """Undo :func:`plan_mark_unhealthy`; uncordon only a node whose annotation says we did.
    The recovery's own fact replaces the fault's, so a replay knows it got this far."""
    spec = node.get("spec") or {}
    metadata: Json = {}
    spec_patch: Json = {}
    annotations: Json = {}
    lifted = False
    if CORDONED_BY_ANNOTATION in annotations_of(node):
        annotations[CORDONED_BY_ANNOTATION] = None
        if spec.get("unschedulable"):
            spec_patch["unschedulable"] = None
            lifted = True
    taints = list(spec.get("taints") or [])
    remaining = [t for t in taints if not _is_our_taint(t)]
    if len(remaining) != len(taints):
        spec_patch["taints"] = remaining or None
        lifted = True
    label = _labels(node).get(HEALTH_LABEL)
    if label != NodeMark.SCHEDULABLE.value:
        metadata["labels"] = {HEALTH_LABEL: NodeMark.SCHEDULABLE.value}
        lifted = lifted or label is not None
    condition = _node_condition(node, GPU_CONDITION)
    lifted = lifted or (condition is not None and condition.get("status") == "False")
    if lifted and fact_id_of(node) != fact.id:
        annotations[FACT_ANNOTATION] = fact_annotation(fact)
    if annotations:
        metadata["annotations"] = annotations
    return NodeChange(
        node_patch=_node_patch(node, metadata, spec_patch),
        condition=_condition_update(node, "True", fact.reason, fact.message, now),
        lifted=lifted,
    )


def _node_patch(node: Mapping[str, Any], metadata: Json, spec: Json) -> Json | None:
    if not metadata and not spec:
        return None
    patch: Json = {
        "metadata": {**metadata, "resourceVersion": meta_of(node).get("resourceVersion")}
    }
    if spec:
        patch["spec"] = spec
    return patch


def facts_from_node(node: Mapping[str, Any]) -> NodeFacts:
    labels = _labels(node)
    ready = _node_condition(node, "Ready")
    ready_status = None if ready is None else ready.get("status")
    try:
        mark = NodeMark(labels[HEALTH_LABEL]) if HEALTH_LABEL in labels else None
    except ValueError:
        mark = None
    return NodeFacts(
        name=meta_of(node).get("name", ""),
        exists=True,
        ready={"True": True, "False": False}.get(ready_status or ""),
        instance_type=next((labels[k] for k in INSTANCE_TYPE_LABELS if labels.get(k)), None),
        mark=mark,
        cordoned_by_us=CORDONED_BY_ANNOTATION in annotations_of(node),
        unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
        fact=fact_of(node),
    )
