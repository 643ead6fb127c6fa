"""Pod operations for task governance: list and watch, remove the admission gate, evict
through the Eviction API, force-delete, annotate, record Events. What it hands out
(:class:`~coordinator.pods.PodInfo`, :class:`EvictResult`) holds no kubernetes types.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from coordinator.actuators import ActionResult
from coordinator.backends.kubernetes.client import (
    ApiCall,
    ApiCallObserver,
    KubeApi,
    KubeUnavailableError,
    RetryPolicy,
    close_api_client,
    describe,
    is_transient,
    json_body,
    outcome_of,
    status_of,
)
from coordinator.backends.kubernetes.contract import (
    JSON_PATCH,
    MERGE_PATCH,
    EventReason,
    EventType,
)
from coordinator.backends.kubernetes.events import Events
from coordinator.backends.kubernetes.node_marks import annotations_of
from coordinator.pods import (  # pure pod parsing lives there, so governance needs no client
    ADMISSION_GATE,
    ObjectRef,
    PodInfo,
    diff_pods,
    pod_info_from_json,
)

log = structlog.get_logger(__name__)

Json = dict[str, Any]


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
        self._api = KubeApi(api_client, self._retry, observer, rng)
        self._events = Events(self._api, "default", component)
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
                return json_body(
                    core.list_pod_for_all_namespaces(
                        label_selector=label_selector,
                        _preload_content=False,
                        _request_timeout=timeout,
                    )
                )
            return json_body(
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
            outcome = outcome_of(exc)
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
                    await self._patch_pod(namespace, name, operations, JSON_PATCH, deadline)
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
                lambda t: json_body(
                    self._api.core.create_namespaced_pod_eviction(
                        name, namespace, eviction, _preload_content=False, _request_timeout=t
                    )
                ),
                self._deadline(),
                # 429 is the disruption budget's answer: report it, the caller decides when
                # to try again.
                transient=lambda exc: is_transient(exc) and status_of(exc) != 429,
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
                lambda t: json_body(
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
            current = annotations_of(await self._read_pod(namespace, name, deadline))
            changes = {k: v for k, v in annotations.items() if current.get(k) != v}
            if not changes:
                return ActionResult(ok=True, changed=False, detail="annotations already so")
            await self._patch_pod(
                namespace, name, {"metadata": {"annotations": changes}}, MERGE_PATCH, deadline
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
            lambda t: json_body(
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
            lambda t: json_body(
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
