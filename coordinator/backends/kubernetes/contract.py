"""The Kubernetes contract (DESIGN.md): the names gpuwarden writes on nodes, its Event
reasons, and every (verb, resource) it calls, which RBAC must grant exactly. Plain data.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

# --- the Kubernetes contract (DESIGN.md) ------------------------------------------------------

HEALTH_LABEL: Final = "gpuwarden.io/node-health"
UNHEALTHY_TAINT_KEY: Final = "gpuwarden.io/unhealthy"
UNHEALTHY_TAINT_EFFECT: Final = "NoSchedule"
CORDONED_BY_ANNOTATION: Final = "gpuwarden.io/cordoned-by"
# The decision behind the node's current mark (JSON: id, reason, message, at). It is written
# in the same PATCH as the label, so whoever finishes an interrupted mark (a retry, a restart,
# a new leader) finds the original fault text and the one Event name to use.
FACT_ANNOTATION: Final = "gpuwarden.io/mark-fact"
GPU_CONDITION: Final = "GPUHealthy"
INSTANCE_TYPE_LABELS: Final = (
    "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/instance-type",
)

# Every (verb, resource) this module may call. RBAC must grant exactly these; a call outside the
# set fails at once (ValueError), so the constant cannot drift from the code.
API_CALLS_USED: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        ("get", "nodes"),
        ("list", "nodes"),
        ("patch", "nodes"),
        ("patch", "nodes/status"),
        ("get", "events"),
        ("create", "events"),
        ("get", "leases"),
        ("create", "leases"),
        ("update", "leases"),
        ("get", "pods"),
        ("list", "pods"),
        ("watch", "pods"),
        ("patch", "pods"),
        ("delete", "pods"),
        ("create", "pods/eviction"),
        # the gpuwarden signer (csr.py)
        ("list", "certificatesigningrequests"),
        ("update", "certificatesigningrequests/approval"),
        ("update", "certificatesigningrequests/status"),
        # the admission webhook's caBundle (webhook.py)
        ("get", "mutatingwebhookconfigurations"),
        ("patch", "mutatingwebhookconfigurations"),
    }
)
# The API group of each resource above, for the ClusterRole's apiGroups.
API_GROUP_OF: Final[Mapping[str, str]] = {
    "nodes": "",
    "nodes/status": "",
    "events": "",
    "leases": "coordination.k8s.io",
    "pods": "",
    "pods/eviction": "",
    "certificatesigningrequests": "certificates.k8s.io",
    "certificatesigningrequests/approval": "certificates.k8s.io",
    "certificatesigningrequests/status": "certificates.k8s.io",
    "mutatingwebhookconfigurations": "admissionregistration.k8s.io",
}

STRATEGIC_MERGE: Final = "application/strategic-merge-patch+json"
MERGE_PATCH: Final = "application/merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
EVENT_MESSAGE_LIMIT: Final = 1024  # the API server rejects longer event messages
FACT_MESSAGE_LIMIT: Final = 1024
class EventReason(enum.StrEnum):
    GPU_FAULT = "GPUFault"
    NODE_MARKED_FOR_RECOVERY = "NodeMarkedForRecovery"
    NODE_RECOVERED = "NodeRecovered"
    TASK_REQUEUED = "TaskRequeued"
    TASK_PREEMPTED = "TaskPreempted"
    TASK_ADMITTED = "TaskAdmitted"
    CHECKPOINT_GRACE_ADJUSTED = "CheckpointGraceAdjusted"


NODE_EVENT_REASONS = frozenset({"GPUFault", "NodeMarkedForRecovery"})


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"
