"""The Kubernetes back end: node actuator, leader election and pod operations.

This is the only module of the coordinator that imports ``kubernetes`` (kopf's rule: the
client stays behind one layer). What it hands out - :class:`~coordinator.actuators.ActionResult`,
:class:`PodInfo`, :class:`EvictResult` - holds no kubernetes types, so governance and the engine
never import the client.

Every API call is a blocking call of the official client: it runs in a thread with a request
timeout (a slow API server never stalls the event loop), is counted by an optional observer
(Prometheus action latencies), and must be one of :data:`API_CALLS_USED` (the RBAC test checks
the ClusterRole against that set). Writes to nodes are read-modify-write with the
resourceVersion as precondition: a conflict re-reads and tries again, so a concurrent change
by someone else is never overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import os
import random
import secrets
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.watch.watch import iter_resp_lines

from coordinator.actuators import ActionResult, MarkFact, NodeFacts, NodeMark
from coordinator.pods import (  # pure pod parsing lives there, so governance needs no client
    ADMISSION_GATE,
    CHECKPOINT_GRACE_ANNOTATION,
    GPU_RESOURCE,
    LAST_CHECKPOINT_ANNOTATION,
    MAX_REQUEUES_ANNOTATION,
    PRIORITY_CLASS_LABEL,
    TASK_LABEL,
    TASK_SIZE_ANNOTATION,
    ObjectRef,
    PodInfo,
    diff_pods,
    parse_time,
    pod_gpus,
    pod_info_from_json,
)
from gpuwarden_common.backoff import backoff_delay

log = structlog.get_logger(__name__)

T = TypeVar("T")
Json = dict[str, Any]

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
        # the gpuwarden signer (coordinator/kube_csr.py)
        ("list", "certificatesigningrequests"),
        ("update", "certificatesigningrequests/approval"),
        ("update", "certificatesigningrequests/status"),
        # the admission webhook's caBundle (coordinator/kube_webhook.py)
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

_STRATEGIC_MERGE: Final = "application/strategic-merge-patch+json"
_MERGE_PATCH: Final = "application/merge-patch+json"
_JSON_PATCH: Final = "application/json-patch+json"
_EVENT_MESSAGE_LIMIT: Final = 1024  # the API server rejects longer event messages
_FACT_MESSAGE_LIMIT: Final = 1024


class EventReason(enum.StrEnum):
    GPU_FAULT = "GPUFault"
    NODE_MARKED_FOR_RECOVERY = "NodeMarkedForRecovery"
    NODE_RECOVERED = "NodeRecovered"
    TASK_REQUEUED = "TaskRequeued"
    TASK_PREEMPTED = "TaskPreempted"
    TASK_ADMITTED = "TaskAdmitted"
    CHECKPOINT_GRACE_ADJUSTED = "CheckpointGraceAdjusted"


_NODE_EVENT_REASONS = frozenset({"GPUFault", "NodeMarkedForRecovery"})


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class KubeConfigError(Exception):
    """No usable cluster configuration for the requested ``--kube`` mode."""


class LeaseNamespaceMissingError(KubeConfigError):
    """The Lease's namespace does not exist: no replica can ever lead, so waiting is useless."""


class KubeUnavailableError(Exception):
    """The API server did not answer (5xx, timeouts, connection errors) within the deadline."""


# --- observing calls --------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCall:
    """One API call, as the observer sees it. ``outcome``: ``ok``, the HTTP status code of an
    error answer, ``timeout``, ``error`` (connection and other failures) or ``cancelled``."""

    verb: str
    resource: str
    outcome: str
    seconds: float


ApiCallObserver = Callable[[ApiCall], None]


# --- clients ----------------------------------------------------------------------------------

_SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def api_client_for_url(url: str) -> k8s.ApiClient:
    """A client for an API server at ``url`` without authentication (tests, ``kubectl proxy``)."""
    configuration = k8s.Configuration()
    configuration.host = url
    return _client_for(configuration)


def kube_client_from(
    mode: str,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
    service_account_dir: Path = _SERVICE_ACCOUNT_DIR,
) -> k8s.ApiClient:
    """The client for ``--kube auto|in-cluster|kubeconfig:PATH``.

    ``auto`` uses the pod's service account when ``KUBERNETES_SERVICE_HOST`` is set, else
    ``$KUBECONFIG`` or ``~/.kube/config``. Raises :class:`KubeConfigError` saying what is
    missing.
    """
    env = os.environ if environ is None else environ
    configuration = k8s.Configuration()
    if mode == "in-cluster":
        _load_in_cluster(configuration, env, service_account_dir)
    elif mode.startswith("kubeconfig:"):
        _load_kubeconfig(configuration, Path(mode.removeprefix("kubeconfig:")).expanduser())
    elif mode == "auto":
        if env.get("KUBERNETES_SERVICE_HOST"):
            _load_in_cluster(configuration, env, service_account_dir)
        else:
            first = env.get("KUBECONFIG", "").split(os.pathsep)[0]
            path = Path(first) if first else (home or Path.home()) / ".kube" / "config"
            if not path.is_file():
                raise KubeConfigError(
                    "--kube auto: not in a cluster (KUBERNETES_SERVICE_HOST is unset) and no "
                    f"kubeconfig at {path}; use --kube kubeconfig:PATH"
                )
            _load_kubeconfig(configuration, path)
    else:
        raise KubeConfigError(f"--kube {mode!r}: expected auto, in-cluster or kubeconfig:PATH")
    return _client_for(configuration)


def _load_in_cluster(
    configuration: k8s.Configuration, env: Mapping[str, str], account_dir: Path
) -> None:
    loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=str(account_dir / "token"),
        cert_filename=str(account_dir / "ca.crt"),
        environ=env,
    )
    try:
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except ConfigException as exc:
        raise KubeConfigError(f"--kube in-cluster: service account unusable: {exc}") from exc


def _load_kubeconfig(configuration: k8s.Configuration, path: Path) -> None:
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path), client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError) as exc:
        raise KubeConfigError(f"--kube kubeconfig:{path}: {exc}") from exc


def close_api_client(api_client: k8s.ApiClient) -> None:
    """Close a client's connection pool (so callers need not import kubernetes)."""
    api_client.close()  # type: ignore[no-untyped-call]


def _client_for(configuration: k8s.Configuration) -> k8s.ApiClient:
    # urllib3 would retry idempotent calls on its own (3 times, each with the full timeout);
    # retries are this module's job, within one deadline.
    configuration.retries = False
    return k8s.ApiClient(configuration)


# --- calling the API --------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one operation tries: transient failures (5xx, 429 from API priority and
    fairness, timeouts, connection errors) are retried with jittered exponential backoff until
    ``deadline_s``; optimistic-concurrency conflicts re-read and retry ``conflict_attempts``
    times."""

    deadline_s: float = 30.0
    request_timeout_s: float = 10.0
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    conflict_attempts: int = 5

    def delay(self, attempt: int, rng: random.Random) -> float:
        return backoff_delay(attempt, self.base_delay_s, self.max_delay_s, rng.random)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status in {0, 429} or exc.status >= 500
    return isinstance(exc, urllib3.exceptions.HTTPError | TimeoutError | ConnectionError)


def _survivable(exc: BaseException) -> bool:
    """An answer or a failure of the API server (worth retrying later), not a bug of ours."""
    return isinstance(exc, ApiException) or is_transient(exc)


def _status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, ApiException) else None


def describe(exc: BaseException) -> str:
    """A one-line account of a failed call (the API server's own message when it sent one)."""
    if isinstance(exc, ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = str(json.loads(exc.body or "{}").get("message", ""))
        return f"HTTP {exc.status} {exc.reason or ''}".strip() + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return str(exc.status)
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
        return "timeout"
    return "error"


def _json_body(response: Any) -> Any:
    """Read a raw (``_preload_content=False``) response: the API's own JSON, without the
    client's model round trip."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


# A thread that outlives its request timeout by this much is abandoned (its result dropped).
_THREAD_SLACK_S: Final = 2.0
_MIN_REQUEST_TIMEOUT_S: Final = 0.5


class _Api:
    """One client; every call in a thread, bounded, observed and declared."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        policy: RetryPolicy,
        observer: ApiCallObserver | None,
        rng: random.Random | None,
    ) -> None:
        self.client = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.coordination = k8s.CoordinationV1Api(api_client)
        self.policy = policy
        self.rng = rng or random.Random()
        self._observer = observer

    def observe(self, call: ApiCall) -> None:
        if self._observer is None:
            return
        try:
            self._observer(call)
        except Exception:  # a metrics bug must not fail an action on a machine
            log.exception("kube.observer_failed", verb=call.verb, resource=call.resource)

    async def once(
        self,
        verb: str,
        resource: str,
        request: Callable[[float], T],
        timeout_s: float | None = None,
    ) -> T:
        """Run ``request(timeout)`` in a thread; ``timeout`` goes to ``_request_timeout``."""
        if (verb, resource) not in API_CALLS_USED:
            raise ValueError(f"{verb} {resource} is not in API_CALLS_USED")
        timeout = max(_MIN_REQUEST_TIMEOUT_S, timeout_s or self.policy.request_timeout_s)
        started = time.monotonic()
        outcome = "ok"
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(request, timeout), timeout + _THREAD_SLACK_S
            )
        except BaseException as exc:
            outcome = _outcome_of(exc)
            raise
        finally:
            self.observe(ApiCall(verb, resource, outcome, time.monotonic() - started))

    async def retried(
        self,
        verb: str,
        resource: str,
        request: Callable[[float], T],
        deadline: float,
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """:meth:`once`, retrying transient failures until ``deadline`` (monotonic); then
        :class:`KubeUnavailableError`. Other errors (404, 409, 422, ...) propagate at once."""
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await self.once(
                    verb, resource, request, min(self.policy.request_timeout_s, remaining)
                )
            except Exception as exc:
                if not transient(exc):
                    raise
                pause = self.policy.delay(attempt, self.rng)
                if time.monotonic() + pause >= deadline:
                    raise KubeUnavailableError(f"{verb} {resource}: {describe(exc)}") from exc
                log.info("kube.retry", verb=verb, resource=resource, error=describe(exc))
                attempt += 1
                await asyncio.sleep(pause)


def _utc_now() -> datetime:
    moment = datetime.now(UTC)
    # MicroTime is parsed with a fixed six-digit fraction; isoformat() drops the fraction when
    # it is zero, which the API server would reject.
    return moment if moment.microsecond else moment.replace(microsecond=1)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- events -----------------------------------------------------------------------------------


class _Events:
    def __init__(self, api: _Api, namespace: str, component: str) -> None:
        self._api = api
        self._namespace = namespace  # for cluster-scoped objects (nodes)
        self._component = component

    async def record(
        self,
        involved: ObjectRef,
        reason: EventReason,
        message: str,
        event_type: EventType,
        deadline: float,
        *,
        name: str | None = None,
    ) -> bool:
        """Create the Event; with ``name``, at most once: False when an Event of that name
        exists already (an earlier attempt of the same fact got it in)."""
        namespace = involved.namespace or self._namespace
        if name is not None and await self._exists(namespace, name, deadline):
            return False
        now = _utc_now()
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                name=name or f"{involved.name}.{uuid.uuid4().hex[:16]}", namespace=namespace
            ),
            involved_object=k8s.V1ObjectReference(
                kind=involved.kind,
                name=involved.name,
                namespace=involved.namespace or None,
                uid=involved.uid or None,
                api_version=involved.api_version,
            ),
            reason=str(reason),
            message=message[:_EVENT_MESSAGE_LIMIT],
            type=str(event_type),
            source=k8s.V1EventSource(component=self._component),
            reporting_component=self._component,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self._api.retried(
                "create",
                "events",
                lambda t: self._api.core.create_namespaced_event(
                    namespace, event, _request_timeout=t
                ),
                deadline,
            )
        except ApiException as exc:
            if exc.status == 409 and name is not None:
                return False  # a request that timed out on our side landed after all
            raise
        return True

    async def _exists(self, namespace: str, name: str, deadline: float) -> bool:
        try:
            await self._api.retried(
                "get",
                "events",
                lambda t: _json_body(
                    self._api.core.read_namespaced_event(
                        name, namespace, _preload_content=False, _request_timeout=t
                    )
                ),
                deadline,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


def fact_event_name(node: str, fact: MarkFact) -> str:
    """The one Event name of a node's fact (a DNS subdomain of at most 253 characters)."""
    return f"{node[:236]}.{fact.id}"


# --- nodes: pure planning ---------------------------------------------------------------------


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _metadata(obj).get("labels") or {}


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return _metadata(obj).get("annotations") or {}


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
        {"id": fact.id, "reason": fact.reason, "message": fact.message[:_FACT_MESSAGE_LIMIT],
         "at": round(fact.at, 3)},
        sort_keys=True,
    )  # fmt: skip


def fact_of(node: Mapping[str, Any]) -> MarkFact | None:
    """The fact a node's annotation records; None when absent or unreadable (not ours)."""
    raw = _annotations(node).get(FACT_ANNOTATION)
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


def _fact_id(node: Mapping[str, Any]) -> str | None:
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
    if _fact_id(node) != fact.id:
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
    if CORDONED_BY_ANNOTATION in _annotations(node):
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
    if lifted and _fact_id(node) != fact.id:
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
        "metadata": {**metadata, "resourceVersion": _metadata(node).get("resourceVersion")}
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
        name=_metadata(node).get("name", ""),
        exists=True,
        ready={"True": True, "False": False}.get(ready_status or ""),
        instance_type=next((labels[k] for k in INSTANCE_TYPE_LABELS if labels.get(k)), None),
        mark=mark,
        cordoned_by_us=CORDONED_BY_ANNOTATION in _annotations(node),
        unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
        fact=fact_of(node),
    )


# --- nodes: the actuator ----------------------------------------------------------------------


class KubeActuator:
    """Applies DESIGN.md's Kubernetes contract to nodes (see ``coordinator.actuators``)."""

    name: str = "kubernetes"

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        owner: str = "gpuwarden",
        event_namespace: str = "default",
        retry: RetryPolicy | None = None,
        observer: ApiCallObserver | None = None,
        rng: random.Random | None = None,
        close_client: bool = False,
    ) -> None:
        self._retry = retry or RetryPolicy()
        self._api = _Api(api_client, self._retry, observer, rng)
        self._events = _Events(self._api, event_namespace, owner)
        self._owner = owner
        self._close_client = close_client

    async def mark_unhealthy(self, node: str, mark: NodeMark, fact: MarkFact) -> ActionResult:
        # the caller may name the Event's reason (a node recovering is still marked, but it
        # is no new GPU fault); otherwise the mark decides it
        event_reason = (
            EventReason(fact.reason)
            if fact.reason in _NODE_EVENT_REASONS
            else EventReason.GPU_FAULT
            if mark is NodeMark.UNSCHEDULABLE
            else EventReason.NODE_MARKED_FOR_RECOVERY
        )
        return await self._converge(
            node,
            lambda current, now: plan_mark_unhealthy(
                current, mark, fact, owner=self._owner, now=now
            ),
            # every fact gets its Event, even when the marks were all in place already: an
            # earlier attempt (or leader) may have stopped between the marks and the Event
            lambda _current, _change: (
                event_reason, EventType.WARNING, f"{mark.value}: {fact.reason}: {fact.message}"
            ),
            fact,
        )

    async def mark_healthy(self, node: str, fact: MarkFact) -> ActionResult:
        return await self._converge(
            node,
            lambda current, now: plan_mark_healthy(current, fact, now=now),
            # a recovery is news only when it lifted something, now or in an earlier attempt
            # of the same fact (whose PATCH left the fact annotation behind)
            lambda current, change: (
                (EventReason.NODE_RECOVERED, EventType.NORMAL, f"{fact.reason}: {fact.message}")
                if change.lifted or _fact_id(current) == fact.id
                else None
            ),
            fact,
        )

    async def node_facts(self, node: str) -> NodeFacts:
        """Raises :class:`KubeUnavailableError` when the API server cannot be read."""
        deadline = time.monotonic() + self._retry.deadline_s
        try:
            return facts_from_node(await self._read_node(node, deadline))
        except ApiException as exc:
            if exc.status == 404:
                return NodeFacts(name=node, exists=False)
            raise KubeUnavailableError(f"get node {node}: {describe(exc)}") from exc

    async def list_marked(self) -> list[NodeFacts]:
        """Raises :class:`KubeUnavailableError` when the API server cannot be read."""
        selector = f"{HEALTH_LABEL},{HEALTH_LABEL}!={NodeMark.SCHEDULABLE.value}"
        deadline = time.monotonic() + self._retry.deadline_s
        try:
            listing = await self._api.retried(
                "list",
                "nodes",
                lambda t: _json_body(
                    self._api.core.list_node(
                        label_selector=selector, _preload_content=False, _request_timeout=t
                    )
                ),
                deadline,
            )
        except ApiException as exc:
            raise KubeUnavailableError(f"list nodes: {describe(exc)}") from exc
        return [facts_from_node(item) for item in listing.get("items") or []]

    async def close(self) -> None:
        if self._close_client:
            await asyncio.to_thread(close_api_client, self._api.client)

    async def _read_node(self, node: str, deadline: float) -> Json:
        body: Json = await self._api.retried(
            "get",
            "nodes",
            lambda t: _json_body(
                self._api.core.read_node(node, _preload_content=False, _request_timeout=t)
            ),
            deadline,
        )
        return body

    async def _converge(
        self,
        node: str,
        plan: Callable[[Json, str], NodeChange],
        event_for: Callable[[Json, NodeChange], tuple[EventReason, EventType, str] | None],
        fact: MarkFact,
    ) -> ActionResult:
        """Read, plan, write with the read's resourceVersion (on conflict read again), then
        make sure the fact's one Event exists. Not ok until all of it is done, so the caller
        retries whatever is missing."""
        deadline = time.monotonic() + self._retry.deadline_s
        try:
            for attempt in range(self._retry.conflict_attempts):
                current = await self._read_node(node, deadline)
                change = plan(current, _rfc3339(datetime.now(UTC)))
                if not change.empty:
                    try:
                        await self._write(node, change, deadline)
                    except ApiException as exc:
                        if exc.status != 409:
                            raise
                        log.info("kube.node_conflict", node=node, attempt=attempt)
                        await asyncio.sleep(self._retry.delay(attempt, self._api.rng))
                        continue
                detail = f"node {node} updated" if not change.empty else f"node {node} already so"
                event = event_for(current, change)
                if event is not None:
                    detail += await self._record_event(current, node, event, fact, deadline)
                return ActionResult(ok=True, changed=not change.empty, detail=detail)
            return ActionResult(
                ok=False,
                changed=False,
                detail=f"node {node}: still conflicting after "
                f"{self._retry.conflict_attempts} attempts",
            )
        except ApiException as exc:
            if exc.status == 404:
                return ActionResult(ok=False, changed=False, detail=f"node {node} is gone")
            return ActionResult(ok=False, changed=False, detail=f"node {node}: {describe(exc)}")
        except KubeUnavailableError as exc:
            return ActionResult(ok=False, changed=False, detail=f"node {node}: {exc}")

    async def _write(self, node: str, change: NodeChange, deadline: float) -> None:
        core = self._api.core
        node_patch, condition = change.node_patch, change.condition
        if node_patch is not None:
            await self._api.retried(
                "patch",
                "nodes",
                lambda t: core.patch_node(
                    node, node_patch, _content_type=_STRATEGIC_MERGE, _request_timeout=t
                ),
                deadline,
            )
        if condition is not None:
            # Conditions merge by type, so the kubelet's own conditions are left alone and no
            # version precondition is needed (the kubelet writes status every few seconds).
            status_patch = {"status": {"conditions": [condition]}}
            await self._api.retried(
                "patch",
                "nodes/status",
                lambda t: core.patch_node_status(
                    node, status_patch, _content_type=_STRATEGIC_MERGE, _request_timeout=t
                ),
                deadline,
            )

    async def _record_event(
        self,
        current: Mapping[str, Any],
        node: str,
        event: tuple[EventReason, EventType, str],
        fact: MarkFact,
        deadline: float,
    ) -> str:
        """The fact's Event, once: named after the fact, so a second attempt finds it. A
        failure raises, which fails the action: it is retried until the Event is in."""
        reason, event_type, message = event
        involved = ObjectRef(kind="Node", name=node, uid=_metadata(current).get("uid", ""))
        try:
            created = await self._events.record(
                involved, reason, message, event_type, deadline, name=fact_event_name(node, fact)
            )
        except ApiException as exc:
            raise KubeUnavailableError(
                f"event {reason} not recorded: {describe(exc)}"
            ) from exc
        return f"; event {reason}" if created else f"; event {reason} already recorded"

    async def list_nodes(self) -> frozenset[str] | None:
        """Raises :class:`KubeUnavailableError` when the API server cannot be read."""
        deadline = time.monotonic() + self._retry.deadline_s
        try:
            listing = await self._api.retried(
                "list",
                "nodes",
                lambda t: _json_body(
                    self._api.core.list_node(_preload_content=False, _request_timeout=t)
                ),
                deadline,
            )
        except ApiException as exc:
            raise KubeUnavailableError(f"list nodes: {describe(exc)}") from exc
        return frozenset(
            str(_metadata(item).get("name")) for item in listing.get("items") or []
        )


# --- leader election --------------------------------------------------------------------------


def leader_identity(pod_name: str) -> str:
    """Pod name plus a random suffix: a restarted pod never mistakes its predecessor's lease
    for its own."""
    return f"{pod_name}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaseSettings:
    """A standby takes over within ``lease_duration_s + retry_period_s`` of the leader's last
    renewal; the leader stops acting ``renew_deadline_s`` after its last successful renewal,
    which is before anyone else may acquire."""

    name: str = "gpuwarden-coordinator"
    namespace: str = "gpuwarden"
    # Worst case after the leader dies just after renewing: the standby saw that renewal up to
    # one jittered retry late (<= 2.4 s), waits the lease out, then tries at its next retry
    # (<= 2.4 s): 10 + 2.4 + 2.4 = 14.8 s, within the 15 s the coordinator promises.
    lease_duration_s: float = 10.0
    renew_deadline_s: float = 7.0
    retry_period_s: float = 2.0
    request_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("need 0 < retry_period_s < renew_deadline_s < lease_duration_s")


class _Attempt(enum.Enum):
    OURS = "ours"
    HELD_BY_OTHER = "held"
    FAILED = "failed"


class LeaderElector:
    """Lease-based leader election (client-go's algorithm).

    Expiry is judged by when *this* process last saw the lease record change, never by the
    holder's clock, so clock skew cannot make a standby steal a live lease. Run :meth:`run` as a
    task; :meth:`stop` steps down and releases the lease so a standby takes over at once.
    Cancelling :meth:`run` steps down without releasing (the standby waits out the lease).
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        identity: str,
        settings: LeaseSettings | None = None,
        *,
        on_gained: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        observer: ApiCallObserver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.settings = settings or LeaseSettings()
        self.leading = asyncio.Event()
        self._on_gained = on_gained
        self._on_lost = on_lost
        self._api = _Api(
            api_client,
            RetryPolicy(request_timeout_s=self.settings.request_timeout_s),
            observer,
            rng,
        )
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def run(self) -> None:
        self._running = True
        try:
            while not self._stopping.is_set():
                if self.is_leader:
                    await self._keep_leading()
                elif await self._attempt() is _Attempt.OURS:
                    self._gain()
                else:
                    jitter = 1 + 0.2 * self._api.rng.random()
                    await self._pause(self.settings.retry_period_s * jitter)
        finally:
            was_leader = self.is_leader
            self._lose()  # stop acting before anyone else can take over
            if was_leader and self._stopping.is_set():
                await self._release()
            self._finished.set()

    async def stop(self) -> None:
        """Step down, release the lease, and return when :meth:`run` has finished."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()

    async def _keep_leading(self) -> None:
        while self.is_leader and not self._stopping.is_set():
            await self._pause(self.settings.retry_period_s)
            if self._stopping.is_set():
                return
            budget = self._renewed_at + self.settings.renew_deadline_s - time.monotonic()
            result = _Attempt.FAILED
            if budget > 0:
                with contextlib.suppress(TimeoutError):
                    result = await asyncio.wait_for(self._attempt(), budget)
            if result is _Attempt.HELD_BY_OTHER:
                log.warning("kube.leader_lost", identity=self.identity, why="lease taken")
                self._lose()
            elif time.monotonic() - self._renewed_at >= self.settings.renew_deadline_s:
                log.warning("kube.leader_lost", identity=self.identity, why="renew deadline")
                self._lose()

    async def _attempt(self) -> _Attempt:
        """Acquire or renew once."""
        sent_at = time.monotonic()
        now = _utc_now()
        try:
            lease = await self._api.once("get", "leases", self._read_lease)
        except ApiException as exc:
            if exc.status == 404:
                return await self._create(sent_at, now)
            log.info("kube.lease_read_failed", error=describe(exc))
            return _Attempt.FAILED
        except Exception as exc:
            if not _survivable(exc):
                raise
            log.info("kube.lease_read_failed", error=describe(exc))
            return _Attempt.FAILED
        spec = lease.spec or k8s.V1LeaseSpec()
        self._note(spec)
        holder = spec.holder_identity
        if holder and holder != self.identity and not self._expired(spec):
            return _Attempt.HELD_BY_OTHER
        ours = holder == self.identity
        lease.spec = self._spec(
            acquired=spec.acquire_time if ours and spec.acquire_time else now,
            renewed=now,
            transitions=(spec.lease_transitions or 0) + (0 if ours or not holder else 1),
        )
        try:
            updated = await self._api.once("update", "leases", self._replace_lease(lease))
        except Exception as exc:
            if not _survivable(exc):
                raise
            log.info("kube.lease_update_failed", error=describe(exc))
            return _Attempt.FAILED
        self._note(updated.spec)
        self._renewed_at = sent_at
        return _Attempt.OURS

    async def _create(self, sent_at: float, now: datetime) -> _Attempt:
        lease = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name=self.settings.name, namespace=self.settings.namespace),
            spec=self._spec(acquired=now, renewed=now, transitions=0),
        )
        try:
            created = await self._api.once(
                "create",
                "leases",
                lambda t: self._api.coordination.create_namespaced_lease(
                    self.settings.namespace, lease, _request_timeout=t
                ),
            )
        except Exception as exc:
            if _status(exc) == 409:
                return _Attempt.HELD_BY_OTHER  # another candidate created it first
            if _status(exc) == 404:
                # creating in a namespace that does not exist: say so once, at error level,
                # and stop, rather than retry every few seconds and never act
                namespace = self.settings.namespace
                message = (
                    f'the Lease namespace "{namespace}" does not exist: create it '
                    f"(kubectl create namespace {namespace}) or pass --lease-namespace "
                    "(GPUWARDEN_LEASE_NAMESPACE) naming one that does"
                )
                log.error("kube.lease_namespace_missing", namespace=namespace, error=message)
                raise LeaseNamespaceMissingError(message) from exc
            if not _survivable(exc):
                raise
            log.info("kube.lease_create_failed", error=describe(exc))
            return _Attempt.FAILED
        self._note(created.spec)
        self._renewed_at = sent_at
        return _Attempt.OURS

    async def _release(self) -> None:
        """Hand the lease back: empty holder, so a standby acquires on its next try."""
        try:
            lease = await self._api.once("get", "leases", self._read_lease)
            spec = lease.spec or k8s.V1LeaseSpec()
            if spec.holder_identity != self.identity:
                return
            now = _utc_now()
            lease.spec = k8s.V1LeaseSpec(
                holder_identity=None,
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=spec.lease_transitions,
            )
            await self._api.once("update", "leases", self._replace_lease(lease))
        except Exception as exc:
            if not _survivable(exc):
                raise
            log.warning("kube.lease_release_failed", error=describe(exc))

    def _read_lease(self, timeout: float) -> k8s.V1Lease:
        return self._api.coordination.read_namespaced_lease(
            self.settings.name, self.settings.namespace, _request_timeout=timeout
        )

    def _replace_lease(self, lease: k8s.V1Lease) -> Callable[[float], k8s.V1Lease]:
        def request(timeout: float) -> k8s.V1Lease:
            return self._api.coordination.replace_namespaced_lease(
                self.settings.name, self.settings.namespace, lease, _request_timeout=timeout
            )

        return request

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> k8s.V1LeaseSpec:
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            # The field is whole seconds; rounding up never shortens what others must wait.
            lease_duration_seconds=math.ceil(self.settings.lease_duration_s),
            acquire_time=acquired,
            renew_time=renewed,
            lease_transitions=transitions,
        )

    def _note(self, spec: k8s.V1LeaseSpec | None) -> None:
        if spec is None:
            return
        record = (
            spec.holder_identity,
            spec.renew_time,
            spec.acquire_time,
            spec.lease_duration_seconds,
            spec.lease_transitions,
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()

    def _expired(self, spec: k8s.V1LeaseSpec) -> bool:
        duration = spec.lease_duration_seconds or self.settings.lease_duration_s
        return time.monotonic() > self._observed_at + duration

    def _gain(self) -> None:
        log.info("kube.leader_gained", identity=self.identity)
        self.leading.set()
        if self._on_gained is not None:
            self._on_gained()

    def _lose(self) -> None:
        if not self.leading.is_set():
            return
        self.leading.clear()
        if self._on_lost is not None:
            self._on_lost()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


# --- pods -------------------------------------------------------------------------------------


def _remember(seen: dict[tuple[str, str], PodInfo], change_type: str, pod: PodInfo) -> None:
    if change_type == "DELETED":
        seen.pop(pod.key, None)
    else:
        seen[pod.key] = pod


class EvictOutcome(enum.StrEnum):
    EVICTED = "evicted"
    REFUSED = "refused"  # a PodDisruptionBudget said no (HTTP 429); try again later
    GONE = "gone"
    FAILED = "failed"


@dataclass(frozen=True)
class EvictResult:
    outcome: EvictOutcome
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in (EvictOutcome.EVICTED, EvictOutcome.GONE)


class _WatchPump:
    """A watch stream read in its own thread (a long read must not hold an executor worker)
    and handed to the event loop line by line. Closing shuts the socket down, so the reading
    thread ends now rather than at the server's timeout."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._lock = threading.Lock()
        self._response: Any = None
        self._closed = False

    def adopt(self, response: Any) -> bool:
        """The reading thread's response; False (and shut) when already closed."""
        with self._lock:
            if not self._closed:
                self._response = response
                return True
        with contextlib.suppress(Exception):
            response.shutdown()
        return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()


class KubePods:
    """Pod operations for governance."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        component: str = "gpuwarden",
        retry: RetryPolicy | None = None,
        observer: ApiCallObserver | None = None,
        rng: random.Random | None = None,
        watch_timeout_s: int = 300,
        close_client: bool = False,
    ) -> None:
        self._retry = retry or RetryPolicy()
        self._api = _Api(api_client, self._retry, observer, rng)
        self._events = _Events(self._api, "default", component)
        self._watch_timeout_s = watch_timeout_s
        self._close_client = close_client

    def _deadline(self) -> float:
        return time.monotonic() + self._retry.deadline_s

    async def list_pods(
        self, label_selector: str | None = None, namespace: str | None = None
    ) -> tuple[list[PodInfo], str]:
        """The pods and the list's resourceVersion (to start :meth:`watch_pods` from).
        Raises :class:`KubeUnavailableError` when the API server cannot be read."""
        core = self._api.core

        def request(timeout: float) -> Any:
            if namespace is None:
                return _json_body(
                    core.list_pod_for_all_namespaces(
                        label_selector=label_selector,
                        _preload_content=False,
                        _request_timeout=timeout,
                    )
                )
            return _json_body(
                core.list_namespaced_pod(
                    namespace,
                    label_selector=label_selector,
                    _preload_content=False,
                    _request_timeout=timeout,
                )
            )

        try:
            listing = await self._api.retried("list", "pods", request, self._deadline())
        except ApiException as exc:
            raise KubeUnavailableError(f"list pods: {describe(exc)}") from exc
        pods = [pod_info_from_json(item) for item in listing.get("items") or []]
        return pods, str((listing.get("metadata") or {}).get("resourceVersion", ""))

    async def watch_pods(
        self,
        resource_version: str,
        known: Iterable[PodInfo] = (),
        *,
        label_selector: str | None = None,
        namespace: str | None = None,
    ) -> AsyncIterator[tuple[str, PodInfo]]:
        """``(ADDED|MODIFIED|DELETED, pod)`` from ``resource_version`` on, until closed.

        ``known``: the pods the caller holds (its :meth:`list_pods`). When the server no longer
        has the history to resume from (410 Gone), the pods are listed again and the
        differences from what was known come out as ordinary events. A stream that ends or
        breaks is resumed from the last version seen; transient failures back off.
        """
        seen: dict[tuple[str, str], PodInfo] = {p.key: p for p in known}
        version = resource_version
        attempt = 0
        while True:
            stream = self._watch_stream(version, label_selector, namespace)
            try:
                async with contextlib.aclosing(stream):
                    async for change_type, obj in stream:
                        attempt = 0
                        if change_type == "BOOKMARK":
                            bookmark = (obj.get("metadata") or {}).get("resourceVersion")
                            version = str(bookmark or version)
                            continue
                        pod = pod_info_from_json(obj)
                        version = pod.resource_version or version
                        _remember(seen, change_type, pod)
                        yield change_type, pod
                continue  # the server ended the stream (its timeoutSeconds): resume at once
            except ApiException as exc:
                if exc.status != 410 and not is_transient(exc):
                    raise
                expired = exc.status == 410
                error = describe(exc)
            except (urllib3.exceptions.HTTPError, TimeoutError, ConnectionError) as exc:
                expired = False
                error = describe(exc)
            if expired:
                log.info("kube.watch_expired", resource_version=version)
                try:
                    pods, version = await self.list_pods(label_selector, namespace)
                except KubeUnavailableError as exc:
                    error = str(exc)
                else:
                    for change_type, pod in diff_pods(seen, pods):
                        _remember(seen, change_type, pod)
                        yield change_type, pod
                    continue
            log.info("kube.watch_retry", error=error)
            await asyncio.sleep(self._retry.delay(attempt, self._api.rng))
            attempt += 1

    async def _watch_stream(
        self, version: str, label_selector: str | None, namespace: str | None
    ) -> AsyncGenerator[tuple[str, Json]]:
        """One watch connection: ``(type, raw object)`` until the server ends it. An ERROR
        event is raised as the ApiException it stands for (410 Expired included)."""
        loop = asyncio.get_running_loop()  # ("watch", "pods") is in API_CALLS_USED
        pump = _WatchPump()
        core = self._api.core
        timeout = self._watch_timeout_s
        options: dict[str, Any] = {
            "watch": True,
            "resource_version": version or None,
            "label_selector": label_selector,
            "timeout_seconds": timeout,
            "allow_watch_bookmarks": True,
            "_preload_content": False,
            # connect timeout; the read may legitimately wait for the server's own timeout
            "_request_timeout": (self._retry.request_timeout_s, timeout + 30),
        }

        def deliver(kind: str, payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(pump.queue.put_nowait, (kind, payload))

        def read() -> None:
            response: Any = None
            try:
                if namespace is None:
                    response = core.list_pod_for_all_namespaces(**options)
                else:
                    response = core.list_namespaced_pod(namespace, **options)
                if not pump.adopt(response):
                    return
                for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                    if line.strip():
                        deliver("line", line)
                deliver("end", None)
            except Exception as exc:
                deliver("error", exc)
            finally:
                if response is not None:
                    with contextlib.suppress(Exception):
                        response.release_conn()

        started = time.monotonic()
        outcome = "ok"
        threading.Thread(target=read, name="kube-watch-pods", daemon=True).start()
        try:
            while True:
                kind, payload = await pump.queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise payload
                event = json.loads(payload)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiException(
                        status=int(status.get("code") or 500),
                        reason=f"{status.get('reason', '')}: {status.get('message', '')}",
                    )
                yield str(event.get("type")), event.get("object") or {}
        except BaseException as exc:
            outcome = _outcome_of(exc)
            raise
        finally:
            pump.close()
            self._api.observe(ApiCall("watch", "pods", outcome, time.monotonic() - started))

    async def remove_scheduling_gate(
        self, namespace: str, name: str, gate: str = ADMISSION_GATE
    ) -> ActionResult:
        """Remove one scheduling gate, keeping the others. A JSON patch tests the gate is still
        at the index it was read at, so a concurrent change makes it re-read (422), not
        remove the wrong gate."""
        deadline = self._deadline()
        try:
            for _attempt in range(self._retry.conflict_attempts):
                pod = await self._read_pod(namespace, name, deadline)
                gates = (pod.get("spec") or {}).get("schedulingGates") or []
                index = next((i for i, g in enumerate(gates) if g.get("name") == gate), None)
                if index is None:
                    return ActionResult(ok=True, changed=False, detail=f"{gate} not on the pod")
                path = f"/spec/schedulingGates/{index}"
                operations = [
                    {"op": "test", "path": f"{path}/name", "value": gate},
                    {"op": "remove", "path": path},
                ]
                try:
                    await self._patch_pod(namespace, name, operations, _JSON_PATCH, deadline)
                except ApiException as exc:
                    if exc.status not in (409, 422):
                        raise
                    continue
                return ActionResult(ok=True, changed=True, detail=f"{gate} removed")
            return ActionResult(ok=False, changed=False, detail="the gates kept changing")
        except ApiException as exc:
            return _pod_failure(namespace, name, exc)
        except KubeUnavailableError as exc:
            return ActionResult(ok=False, changed=False, detail=str(exc))

    async def evict(self, namespace: str, name: str, grace_seconds: int) -> EvictResult:
        """Evict through the Eviction API, so PodDisruptionBudgets are honoured."""
        eviction = k8s.V1Eviction(
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace),
            delete_options=k8s.V1DeleteOptions(grace_period_seconds=grace_seconds),
        )
        try:
            await self._api.retried(
                "create",
                "pods/eviction",
                lambda t: _json_body(
                    self._api.core.create_namespaced_pod_eviction(
                        name, namespace, eviction, _preload_content=False, _request_timeout=t
                    )
                ),
                self._deadline(),
                # 429 is the disruption budget's answer: report it, the caller decides when
                # to try again.
                transient=lambda exc: is_transient(exc) and _status(exc) != 429,
            )
        except ApiException as exc:
            if exc.status == 404:
                return EvictResult(EvictOutcome.GONE, f"pod {namespace}/{name} is gone")
            if exc.status == 429:
                return EvictResult(EvictOutcome.REFUSED, describe(exc))
            return EvictResult(EvictOutcome.FAILED, describe(exc))
        except KubeUnavailableError as exc:
            return EvictResult(EvictOutcome.FAILED, str(exc))
        return EvictResult(EvictOutcome.EVICTED, f"pod {namespace}/{name} evicted")

    async def force_delete(self, namespace: str, name: str) -> ActionResult:
        """Delete with grace 0: for pods on a dead kubelet, which will never confirm."""
        options = k8s.V1DeleteOptions(grace_period_seconds=0)
        try:
            await self._api.retried(
                "delete",
                "pods",
                lambda t: _json_body(
                    self._api.core.delete_namespaced_pod(
                        name,
                        namespace,
                        grace_period_seconds=0,
                        body=options,
                        _preload_content=False,
                        _request_timeout=t,
                    )
                ),
                self._deadline(),
            )
        except ApiException as exc:
            if exc.status == 404:
                return ActionResult(ok=True, changed=False, detail="already gone")
            return _pod_failure(namespace, name, exc)
        except KubeUnavailableError as exc:
            return ActionResult(ok=False, changed=False, detail=str(exc))
        return ActionResult(ok=True, changed=True, detail=f"pod {namespace}/{name} deleted")

    async def annotate(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> ActionResult:
        """Set (or, with None, remove) annotations; writes nothing if they already say so."""
        deadline = self._deadline()
        try:
            current = _annotations(await self._read_pod(namespace, name, deadline))
            changes = {k: v for k, v in annotations.items() if current.get(k) != v}
            if not changes:
                return ActionResult(ok=True, changed=False, detail="annotations already so")
            await self._patch_pod(
                namespace, name, {"metadata": {"annotations": changes}}, _MERGE_PATCH, deadline
            )
        except ApiException as exc:
            return _pod_failure(namespace, name, exc)
        except KubeUnavailableError as exc:
            return ActionResult(ok=False, changed=False, detail=str(exc))
        return ActionResult(ok=True, changed=True, detail=f"annotated {sorted(changes)}")

    async def record_event(
        self,
        involved: ObjectRef,
        reason: EventReason,
        message: str,
        event_type: EventType = EventType.NORMAL,
    ) -> ActionResult:
        try:
            await self._events.record(involved, reason, message, event_type, self._deadline())
        except (ApiException, KubeUnavailableError) as exc:
            return ActionResult(ok=False, changed=False, detail=describe(exc))
        return ActionResult(ok=True, changed=True, detail=f"event {reason}")

    async def close(self) -> None:
        if self._close_client:
            await asyncio.to_thread(close_api_client, self._api.client)

    async def _read_pod(self, namespace: str, name: str, deadline: float) -> Json:
        body: Json = await self._api.retried(
            "get",
            "pods",
            lambda t: _json_body(
                self._api.core.read_namespaced_pod(
                    name, namespace, _preload_content=False, _request_timeout=t
                )
            ),
            deadline,
        )
        return body

    async def _patch_pod(
        self, namespace: str, name: str, body: Any, content_type: str, deadline: float
    ) -> None:
        await self._api.retried(
            "patch",
            "pods",
            lambda t: _json_body(
                self._api.core.patch_namespaced_pod(
                    name,
                    namespace,
                    body,
                    _content_type=content_type,
                    _preload_content=False,
                    _request_timeout=t,
                )
            ),
            deadline,
        )


def _pod_failure(namespace: str, name: str, exc: ApiException) -> ActionResult:
    if exc.status == 404:
        return ActionResult(ok=False, changed=False, detail=f"pod {namespace}/{name} is gone")
    return ActionResult(ok=False, changed=False, detail=f"pod {namespace}/{name}: {describe(exc)}")


__all__ = [
    "ADMISSION_GATE",
    "API_CALLS_USED",
    "API_GROUP_OF",
    "CHECKPOINT_GRACE_ANNOTATION",
    "GPU_RESOURCE",
    "LAST_CHECKPOINT_ANNOTATION",
    "MAX_REQUEUES_ANNOTATION",
    "PRIORITY_CLASS_LABEL",
    "TASK_LABEL",
    "TASK_SIZE_ANNOTATION",
    "ApiCall",
    "ApiCallObserver",
    "EventReason",
    "EventType",
    "EvictOutcome",
    "EvictResult",
    "KubeActuator",
    "KubeConfigError",
    "KubePods",
    "KubeUnavailableError",
    "LeaderElector",
    "LeaseSettings",
    "ObjectRef",
    "PodInfo",
    "RetryPolicy",
    "api_client_for_url",
    "close_api_client",
    "diff_pods",
    "kube_client_from",
    "leader_identity",
    "parse_time",
    "pod_gpus",
    "pod_info_from_json",
]
