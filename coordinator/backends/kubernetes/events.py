"""Kubernetes Events: one per fact, named after it when the fact has an id, so a retry, a
replay or a new leader never records a second one.
"""

from __future__ import annotations

import uuid

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from coordinator.actuators import MarkFact
from coordinator.backends.kubernetes.client import KubeApi, json_body, utc_now
from coordinator.backends.kubernetes.contract import EVENT_MESSAGE_LIMIT, EventReason, EventType
from coordinator.pods import (  # pure pod parsing lives there, so governance needs no client
    ObjectRef,
)

# --- events -----------------------------------------------------------------------------------


class Events:
    def __init__(self, api: KubeApi, namespace: str, component: str) -> None:
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
        now = utc_now()
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
            message=message[:EVENT_MESSAGE_LIMIT],
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
                lambda t: json_body(
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
