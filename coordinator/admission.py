"""The mutating admission webhook's decision, pure: an ``admission.k8s.io/v1`` AdmissionReview
in, its response (with a JSON Patch) out.

After Kueue's ``manageJobsWithoutQueueName``: a GPU-requesting pod created in a namespace the
policy governs waits for admission whether or not its author remembered the scheduling gate.
The webhook adds the ``gpuwarden.io/admission`` gate and the task defaults the governor needs:
the task label (without it the pod would be nobody's task and wait forever) and the policy's
default priority class. A pod labelled ``gpuwarden.io/admission: skip`` is let through as it is
(the MutatingWebhookConfiguration's objectSelector skips it before the call too).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from typing import Any, Final

from coordinator.governance.policy import Policy
from coordinator.pods import ADMISSION_GATE, PRIORITY_CLASS_LABEL, TASK_LABEL, pod_gpus

OPT_OUT_LABEL: Final = "gpuwarden.io/admission"
OPT_OUT_VALUE: Final = "skip"

Json = dict[str, Any]


def governed_namespaces(policy: Policy | None) -> frozenset[str]:
    return frozenset() if policy is None else frozenset(t.namespace for t in policy.teams)


def review_response(review: Mapping[str, Any], policy: Policy | None) -> Json:
    """The AdmissionReview to answer ``review`` with: always allowed, patched when governed."""
    request = review.get("request") or {}
    response: Json = {"uid": request.get("uid", ""), "allowed": True}
    patch = pod_patch(request, policy)
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": response}


def pod_patch(request: Mapping[str, Any], policy: Policy | None) -> list[Json]:
    """JSON Patch operations for the pod in ``request``; empty when it is not ours to gate."""
    if request.get("operation") != "CREATE" or (request.get("kind") or {}).get("kind") != "Pod":
        return []
    pod = request.get("object") or {}
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    labels = meta.get("labels") or {}
    namespace = request.get("namespace") or meta.get("namespace") or ""
    if namespace not in governed_namespaces(policy) or labels.get(OPT_OUT_LABEL) == OPT_OUT_VALUE:
        return []
    if pod_gpus(spec) <= 0:
        return []
    ops: list[Json] = []
    gates = spec.get("schedulingGates")
    if gates is None:
        ops.append({"op": "add", "path": "/spec/schedulingGates", "value": []})
    if not any(g.get("name") == ADMISSION_GATE for g in gates or []):
        ops.append({"op": "add", "path": "/spec/schedulingGates/-",
                    "value": {"name": ADMISSION_GATE}})
    if "labels" not in meta:
        ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
    if not labels.get(TASK_LABEL):
        ops.append(_add_label(TASK_LABEL, default_task(meta)))
    default_class = policy.default_priority_class if policy is not None else None
    if default_class and not labels.get(PRIORITY_CLASS_LABEL):
        ops.append(_add_label(PRIORITY_CLASS_LABEL, default_class))
    return ops


def default_task(meta: Mapping[str, Any]) -> str:
    """The pod's own task unless its author named one: the controller that owns it (a Job's
    pods are one task), else the pod's name, else its generateName with a random suffix."""
    for owner in meta.get("ownerReferences") or []:
        if owner.get("controller") and owner.get("name"):
            return str(owner["name"])[:63]
    if meta.get("name"):
        return str(meta["name"])[:63]
    prefix = str(meta.get("generateName") or "task-").rstrip("-")[:54]
    return f"{prefix}-{secrets.token_hex(4)}"


def _add_label(key: str, value: str) -> Json:
    return {"op": "add", "path": f"/metadata/labels/{_escape(key)}", "value": value}


def _escape(key: str) -> str:
    """RFC 6901: '~' and '/' inside a JSON Pointer token."""
    return key.replace("~", "~0").replace("/", "~1")
