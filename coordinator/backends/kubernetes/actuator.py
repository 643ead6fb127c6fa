"""The Kubernetes node actuator (:class:`coordinator.actuators.Actuator`): writes to nodes
are read-modify-write with the resourceVersion as precondition, so a concurrent change by
someone else is never overwritten.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from coordinator.actuators import ActionResult, MarkFact, NodeFacts, NodeMark
from coordinator.backends.kubernetes.client import (
    ApiCallObserver,
    KubeApi,
    KubeUnavailableError,
    RetryPolicy,
    close_api_client,
    describe,
    json_body,
    rfc3339,
)
from coordinator.backends.kubernetes.contract import (
    HEALTH_LABEL,
    NODE_EVENT_REASONS,
    STRATEGIC_MERGE,
    EventReason,
    EventType,
)
from coordinator.backends.kubernetes.events import Events, fact_event_name
from coordinator.backends.kubernetes.node_marks import (
    NodeChange,
    fact_id_of,
    facts_from_node,
    meta_of,
    plan_mark_healthy,
    plan_mark_unhealthy,
)
from coordinator.pods import (  # pure pod parsing lives there, so governance needs no client
    ObjectRef,
)

log = structlog.get_logger(__name__)

Json = dict[str, Any]


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
        self._api = KubeApi(api_client, self._retry, observer, rng)
        self._events = Events(self._api, event_namespace, owner)
        self._owner = owner
        self._close_client = close_client

    async def mark_unhealthy(self, node: str, mark: NodeMark, fact: MarkFact) -> ActionResult:
        # the caller may name the Event's reason (a node recovering is still marked, but it
        # is no new GPU fault); otherwise the mark decides it
        event_reason = (
            EventReason(fact.reason)
            if fact.reason in NODE_EVENT_REASONS
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
                if change.lifted or fact_id_of(current) == fact.id
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
                lambda t: json_body(
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
            lambda t: json_body(
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
                change = plan(current, rfc3339(datetime.now(UTC)))
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
                    node, node_patch, _content_type=STRATEGIC_MERGE, _request_timeout=t
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
                    node, status_patch, _content_type=STRATEGIC_MERGE, _request_timeout=t
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
        involved = ObjectRef(kind="Node", name=node, uid=meta_of(current).get("uid", ""))
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
                lambda t: json_body(
                    self._api.core.list_node(_preload_content=False, _request_timeout=t)
                ),
                deadline,
            )
        except ApiException as exc:
            raise KubeUnavailableError(f"list nodes: {describe(exc)}") from exc
        return frozenset(
            str(meta_of(item).get("name")) for item in listing.get("items") or []
        )
