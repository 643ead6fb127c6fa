"""Pods as task governance sees them: parsing, diffing, and grouping into tasks.

Pure and free of ``kubernetes`` types, so governance code (and its tests) can use it without
the client; :mod:`coordinator.backends.kubernetes.pod_api` reads pods from the API server
into :class:`PodInfo`.

A task is the set of pods sharing the ``gpuwarden.io/task`` label in one namespace; the
coordinator admits it by removing the ``gpuwarden.io/admission`` scheduling gate from every
pod. Pods are often recreated by their owner (a Job, a JobSet, an operator) after an
eviction, so what the coordinator must remember about a task across pods - its place in the
queue, its requeues and preemptions, its backoff - it writes on the recreated pods too (the
``QUEUE_*`` annotations), where a restarted or newly elected coordinator reads it back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Final, TypeVar

# --- the Kubernetes contract for pods (DESIGN.md) ---------------------------------------------

ADMISSION_GATE: Final = "gpuwarden.io/admission"
TASK_LABEL: Final = "gpuwarden.io/task"
PRIORITY_CLASS_LABEL: Final = "gpuwarden.io/priority-class"
TASK_SIZE_ANNOTATION: Final = "gpuwarden.io/task-size"
LAST_CHECKPOINT_ANNOTATION: Final = "gpuwarden.io/last-checkpoint"
CHECKPOINT_GRACE_ANNOTATION: Final = "gpuwarden.io/checkpoint-grace-seconds"
MAX_REQUEUES_ANNOTATION: Final = "gpuwarden.io/max-requeues"
GPU_RESOURCE: Final = "nvidia.com/gpu"

# The coordinator's memory of a task, written on the pods that replace evicted ones.
QUEUED_AT_ANNOTATION: Final = "gpuwarden.io/queued-at"
REQUEUES_ANNOTATION: Final = "gpuwarden.io/requeues"
PREEMPTIONS_ANNOTATION: Final = "gpuwarden.io/preemptions"
BACKOFF_UNTIL_ANNOTATION: Final = "gpuwarden.io/backoff-until"

SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
RUNNING: Final = "Running"
_TERMINAL_PHASES: Final = frozenset({SUCCEEDED, FAILED})

T = TypeVar("T")


# --- times ------------------------------------------------------------------------------------


def parse_time(value: Any) -> float | None:
    """RFC 3339 (``...Z`` or with an offset) -> epoch seconds; None when absent or invalid."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(epoch_s: float) -> str:
    """Epoch seconds -> RFC 3339 in UTC, to the second (as Kubernetes writes its times)."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- one pod ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    """What an Event is about."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = "v1"


@dataclass(frozen=True)
class PodInfo:
    """What governance needs to know about a pod; free of kubernetes types."""

    namespace: str
    name: str
    uid: str
    node_name: str | None
    phase: str
    task: str | None
    priority_class: str | None
    task_size: int | None
    last_checkpoint: float | None
    checkpoint_grace_s: float | None
    max_requeues: int | None
    gpus: int
    gated: bool
    created_at: float | None
    deletion_timestamp: float | None
    resource_version: str = ""
    queued_at: float | None = None
    requeues: int | None = None
    preemptions: int | None = None
    backoff_until: float | None = None
    checkpoint_grace_text: str | None = None
    """The grace annotation as written (``checkpoint_grace_s`` is None when it is no
    number of seconds), so the governor can tell the pod what it used instead."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(kind="Pod", name=self.name, namespace=self.namespace, uid=self.uid)

    @property
    def terminal(self) -> bool:
        """It ran to an end (Succeeded or Failed) and holds no GPUs any more."""
        return self.phase in _TERMINAL_PHASES

    @property
    def terminating(self) -> bool:
        return self.deletion_timestamp is not None

    @property
    def live(self) -> bool:
        """Neither ended nor on its way out."""
        return not self.terminal and not self.terminating


def _int_or_none(value: Any, minimum: int = 0) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= minimum else None


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _gpu_count(resources: Mapping[str, Any] | None) -> int:
    """A container's GPUs: its request, or its limit when it sets no request (the API server
    defaults an extended resource's request to its limit)."""
    resources = resources or {}
    for section in ("requests", "limits"):
        amount = (resources.get(section) or {}).get(GPU_RESOURCE)
        if amount is not None:
            return _int_or_none(amount) or 0
    return 0


def pod_gpus(spec: Mapping[str, Any]) -> int:
    """The pod's effective GPU demand, as the scheduler counts it: the sum over containers, or
    the largest init container if that is more (init containers run one at a time)."""
    containers = sum(_gpu_count(c.get("resources")) for c in spec.get("containers") or [])
    init = max(
        (_gpu_count(c.get("resources")) for c in spec.get("initContainers") or []), default=0
    )
    return max(containers, init)


def pod_info_from_json(pod: Mapping[str, Any]) -> PodInfo:
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    return PodInfo(
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        uid=metadata.get("uid", ""),
        node_name=spec.get("nodeName") or None,
        phase=(pod.get("status") or {}).get("phase") or "Unknown",
        task=labels.get(TASK_LABEL),
        priority_class=labels.get(PRIORITY_CLASS_LABEL),
        task_size=_int_or_none(annotations.get(TASK_SIZE_ANNOTATION), minimum=1),
        last_checkpoint=parse_time(annotations.get(LAST_CHECKPOINT_ANNOTATION)),
        checkpoint_grace_s=_float_or_none(annotations.get(CHECKPOINT_GRACE_ANNOTATION)),
        max_requeues=_int_or_none(annotations.get(MAX_REQUEUES_ANNOTATION)),
        gpus=pod_gpus(spec),
        gated=any(g.get("name") == ADMISSION_GATE for g in spec.get("schedulingGates") or []),
        created_at=parse_time(metadata.get("creationTimestamp")),
        deletion_timestamp=parse_time(metadata.get("deletionTimestamp")),
        resource_version=str(metadata.get("resourceVersion", "")),
        queued_at=parse_time(annotations.get(QUEUED_AT_ANNOTATION)),
        requeues=_int_or_none(annotations.get(REQUEUES_ANNOTATION)),
        preemptions=_int_or_none(annotations.get(PREEMPTIONS_ANNOTATION)),
        backoff_until=parse_time(annotations.get(BACKOFF_UNTIL_ANNOTATION)),
        checkpoint_grace_text=_text_or_none(annotations.get(CHECKPOINT_GRACE_ANNOTATION)),
    )


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def diff_pods(
    known: Mapping[tuple[str, str], PodInfo], listed: Iterable[PodInfo]
) -> list[tuple[str, PodInfo]]:
    """The watch events that turn ``known`` into ``listed`` (after a re-list)."""
    changes: list[tuple[str, PodInfo]] = []
    now_present: dict[tuple[str, str], PodInfo] = {}
    for pod in listed:
        now_present[pod.key] = pod
        before = known.get(pod.key)
        if before is None or before.uid != pod.uid:
            if before is not None:
                changes.append(("DELETED", before))
            changes.append(("ADDED", pod))
        elif before != pod:
            changes.append(("MODIFIED", pod))
    changes.extend(("DELETED", pod) for key, pod in known.items() if key not in now_present)
    return changes


# --- the pods of one task ---------------------------------------------------------------------


def task_key_of(pod: PodInfo) -> str | None:
    """``namespace/task`` for a pod with the task label, else None (not governed)."""
    return f"{pod.namespace}/{pod.task}" if pod.task else None


@dataclass(frozen=True)
class TaskPods:
    """Every pod the coordinator knows of one task, with what they say together.

    A gang's pods should agree on their labels and annotations; where they do not, the pod
    first by name decides (so the answer does not change with the order pods arrive in),
    except for the checkpoint (the latest any pod reports) and the memory annotations (the
    most requeues and preemptions, the earliest queue time).
    """

    namespace: str
    task: str
    pods: tuple[PodInfo, ...]
    """Sorted by name."""

    @classmethod
    def of(cls, namespace: str, task: str, pods: Iterable[PodInfo]) -> TaskPods:
        return cls(namespace, task, tuple(sorted(pods, key=lambda p: p.name)))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.task}"

    @cached_property
    def gated(self) -> tuple[PodInfo, ...]:
        """Waiting for admission."""
        return tuple(p for p in self.pods if p.gated and p.live)

    @cached_property
    def admitted(self) -> tuple[PodInfo, ...]:
        """Admitted and neither ended nor on their way out."""
        return tuple(p for p in self.pods if not p.gated and p.live)

    @cached_property
    def occupying(self) -> tuple[PodInfo, ...]:
        """Admitted pods that may still hold GPUs: live or terminating (a pod in its grace
        period keeps its GPUs until it is gone)."""
        return tuple(p for p in self.pods if not p.gated and not p.terminal)

    @property
    def succeeded(self) -> bool:
        """The admitted pods all ran to success and nothing else is left to run."""
        ran = [p for p in self.pods if not p.gated]
        return (
            bool(ran)
            and not self.gated
            and not self.occupying
            and all(p.phase == SUCCEEDED for p in ran)
        )

    @property
    def size(self) -> int:
        return max((p.task_size for p in self.pods if p.task_size is not None), default=1)

    @property
    def priority_class(self) -> str | None:
        return self._first(lambda p: p.priority_class)

    @property
    def max_requeues(self) -> int | None:
        return self._first(lambda p: p.max_requeues)

    @property
    def checkpoint_grace_s(self) -> float | None:
        return self._first(lambda p: p.checkpoint_grace_s)

    @property
    def last_checkpoint(self) -> float | None:
        return max((p.last_checkpoint for p in self.pods if p.last_checkpoint), default=None)

    @property
    def arrived_at(self) -> float | None:
        """The task's place in the queue: the one remembered on its pods, else the creation
        of its first pod. Pods that ended (an earlier run under the same name) do not count
        while any other pod is there."""
        pods = (self.gated + self.admitted) or self.pods
        remembered = [p.queued_at for p in pods if p.queued_at is not None]
        if remembered:
            return min(remembered)
        return min((p.created_at for p in pods if p.created_at is not None), default=None)

    @property
    def requeues(self) -> int:
        return max((p.requeues for p in self.pods if p.requeues is not None), default=0)

    @property
    def preemptions(self) -> int:
        return max((p.preemptions for p in self.pods if p.preemptions is not None), default=0)

    @property
    def backoff_until(self) -> float | None:
        return max((p.backoff_until for p in self.pods if p.backoff_until), default=None)

    def admitted_running(self) -> bool:
        """The whole gang is admitted and running."""
        return len(self.admitted) >= self.size and all(p.phase == RUNNING for p in self.admitted)

    def placement(self) -> dict[str, int] | None:
        """GPUs per node of the pods holding GPUs, or None while any of them is unscheduled
        (a partial placement would hide the unscheduled pods' GPUs from the engine)."""
        nodes: dict[str, int] = {}
        for pod in self.occupying:
            if pod.node_name is None:
                return None
            nodes[pod.node_name] = nodes.get(pod.node_name, 0) + pod.gpus
        return nodes

    def on_node(self, node: str) -> tuple[PodInfo, ...]:
        return tuple(p for p in self.occupying if p.node_name == node)

    def _first(self, read: Callable[[PodInfo], T | None]) -> T | None:
        return next((value for p in self.pods if (value := read(p)) is not None), None)


@dataclass(frozen=True)
class OutsideGovernance:
    """GPUs taken on the nodes by pods gpuwarden does not govern."""

    by_node: Mapping[str, int]
    """GPUs per node of the scheduled pods without the task label: no task accounts for
    them, so they come off the capacity the engine hands out."""
    gpus: int
    """Those, and the GPUs of admitted pods of tasks in namespaces no team governs."""
    pods: int
    namespaces: tuple[str, ...]


def outside_governance(pods: Iterable[PodInfo], governed: Container[str]) -> OutsideGovernance:
    """What the pods outside governance hold: GPU pods scheduled on a node and not ended,
    without the task label, or in a namespace no team governs (``governed``)."""
    by_node: dict[str, int] = {}
    gpus = count = 0
    namespaces: set[str] = set()
    for pod in pods:
        if pod.gpus <= 0 or pod.node_name is None or pod.terminal or pod.gated:
            continue
        if pod.task and pod.namespace in governed:
            continue
        if not pod.task:
            by_node[pod.node_name] = by_node.get(pod.node_name, 0) + pod.gpus
        gpus += pod.gpus
        count += 1
        namespaces.add(pod.namespace)
    return OutsideGovernance(by_node, gpus, count, tuple(sorted(namespaces)))


def group_by_task(pods: Iterable[PodInfo]) -> dict[str, TaskPods]:
    """The governed pods (those with a task label) by task key."""
    grouped: dict[tuple[str, str], list[PodInfo]] = {}
    for pod in pods:
        if pod.task:
            grouped.setdefault((pod.namespace, pod.task), []).append(pod)
    return {
        f"{namespace}/{task}": TaskPods.of(namespace, task, members)
        for (namespace, task), members in grouped.items()
    }


__all__ = [
    "ADMISSION_GATE",
    "BACKOFF_UNTIL_ANNOTATION",
    "CHECKPOINT_GRACE_ANNOTATION",
    "GPU_RESOURCE",
    "LAST_CHECKPOINT_ANNOTATION",
    "MAX_REQUEUES_ANNOTATION",
    "PREEMPTIONS_ANNOTATION",
    "PRIORITY_CLASS_LABEL",
    "QUEUED_AT_ANNOTATION",
    "REQUEUES_ANNOTATION",
    "TASK_LABEL",
    "TASK_SIZE_ANNOTATION",
    "ObjectRef",
    "OutsideGovernance",
    "PodInfo",
    "TaskPods",
    "diff_pods",
    "format_time",
    "group_by_task",
    "outside_governance",
    "parse_time",
    "pod_gpus",
    "pod_info_from_json",
    "task_key_of",
]
