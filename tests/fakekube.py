"""An in-test fake Kubernetes API server that the real ``kubernetes`` client talks HTTP to.

It keeps objects with a global resourceVersion, enforces optimistic concurrency (409), answers
404 for missing objects, refuses evictions a disruption budget forbids (429), streams watches
(and answers 410 Expired when asked to resume from history it no longer keeps), and records
every request for assertions. Faults (an error status, or a delay) can be injected on the next
N requests matching a method and a path pattern.

It implements only what gpuwarden uses, but that part behaves like the API server where it
matters to the client: status subresources, strategic-merge of conditions and scheduling
gates by key, no-op patches that do not bump the resourceVersion, graceful pod deletion.

The server runs on its own asyncio loop in a background thread; every public method hops onto
that loop, so tests may call them from any thread (including a pytest-asyncio loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import fnmatch
import json
import re
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web

JsonDict = dict[str, Any]
T = TypeVar("T")

# Lists that strategic-merge-patch merges by a key instead of replacing (from the Go types'
# patchMergeKey tags); every other list is replaced whole, as the API server does.
_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("spec", "schedulingGates"): "name",
    ("spec", "containers"): "name",
    ("spec", "initContainers"): "name",
    ("metadata", "ownerReferences"): "uid",
}

_STATUS_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    409: "Conflict",
    410: "Gone",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def now_rfc3339(delta_s: float = 0.0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=delta_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error answer: becomes a ``Status`` object with this code."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        causes: Sequence[Mapping[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason or _STATUS_REASONS.get(code, "Unknown")
        self.message = message
        self.causes = list(causes)


def status_body(
    code: int,
    message: str,
    reason: str | None = None,
    causes: Sequence[Mapping[str, str]] = (),
) -> JsonDict:
    body: JsonDict = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason or _STATUS_REASONS.get(code, ""),
        "code": code,
    }
    if causes:
        body["details"] = {"causes": [dict(c) for c in causes]}
    return body


# --- label selectors --------------------------------------------------------------------------

_SET_REQUIREMENT = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b`` has two requirements)."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _requirement_matches(requirement: str, labels: Mapping[str, str]) -> bool:
    set_match = _SET_REQUIREMENT.match(requirement)
    if set_match:
        key, operator, raw_values = set_match.groups()
        values = {v.strip() for v in raw_values.split(",")}
        if operator == "in":
            return labels.get(key) in values
        return labels.get(key) not in values
    if "!=" in requirement:
        key, value = (s.strip() for s in requirement.split("!=", 1))
        return labels.get(key) != value
    if "==" in requirement:
        key, value = (s.strip() for s in requirement.split("==", 1))
        return labels.get(key) == value
    if "=" in requirement:
        key, value = (s.strip() for s in requirement.split("=", 1))
        return labels.get(key) == value
    if requirement.startswith("!"):
        return requirement[1:].strip() not in labels
    return requirement in labels


def selector_matches(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes label-selector semantics: comma means AND; ``k!=v`` matches a missing key."""
    if not selector:
        return True
    present = labels or {}
    return all(_requirement_matches(r, present) for r in _split_selector(selector))


# --- patches ----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, ``null`` deletes, lists are replaced."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JsonDict = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """The subset of strategic-merge-patch the API server applies to our objects."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result: JsonDict = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # directives such as $setElementOrder only order lists
        here = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and here in _MERGE_KEYS:
            result[key] = _merge_keyed_list(result.get(key) or [], value, _MERGE_KEYS[here], here)
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(result.get(key), value, here)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_keyed_list(
    current: list[Any], patch: list[Any], merge_key: str, path: tuple[str, ...]
) -> list[Any]:
    merged = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise ApiError(422, f"{'.'.join(path)}: item without merge key {merge_key!r}")
        index = next(
            (i for i, old in enumerate(merged) if old.get(merge_key) == item[merge_key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            merged[index] = strategic_merge_patch(merged[index], item, path)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container_and_key(document: Any, tokens: list[str]) -> tuple[Any, str]:
    node = document
    for token in tokens[:-1]:
        try:
            node = node[int(token)] if isinstance(node, list) else node[token]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, f"path /{'/'.join(tokens)} does not exist") from exc
    return node, tokens[-1]


def _get_pointer(document: Any, tokens: list[str]) -> Any:
    container, key = _container_and_key(document, tokens)
    try:
        return container[int(key)] if isinstance(container, list) else container[key]
    except (KeyError, IndexError, ValueError) as exc:
        raise ApiError(422, f"path /{'/'.join(tokens)} does not exist") from exc


def json_patch(document: Any, operations: Sequence[Any]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, move, copy); errors answer 422."""
    result = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(422, f"invalid JSON patch operation {op!r}")
        tokens = _pointer(op["path"])
        kind = op["op"]
        if kind == "test":
            if _get_pointer(result, tokens) != op.get("value"):
                raise ApiError(422, f"testing value {op['path']} failed")
        elif kind == "remove":
            _remove_pointer(result, tokens)
        elif kind == "add":
            _add_pointer(result, tokens, copy.deepcopy(op.get("value")))
        elif kind == "replace":
            _get_pointer(result, tokens)
            _remove_pointer(result, tokens)
            _add_pointer(result, tokens, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            source = _pointer(op["from"])
            value = copy.deepcopy(_get_pointer(result, source))
            if kind == "move":
                _remove_pointer(result, source)
            _add_pointer(result, tokens, value)
        else:
            raise ApiError(422, f"unknown JSON patch op {kind!r}")
    return result


def _remove_pointer(document: Any, tokens: list[str]) -> None:
    _get_pointer(document, tokens)
    container, key = _container_and_key(document, tokens)
    if isinstance(container, list):
        del container[int(key)]
    else:
        del container[key]


def _add_pointer(document: Any, tokens: list[str], value: Any) -> None:
    container, key = _container_and_key(document, tokens)
    if isinstance(container, list):
        index = len(container) if key == "-" else int(key)
        if index > len(container):
            raise ApiError(422, f"index {index} out of range")
        container.insert(index, value)
    elif isinstance(container, dict):
        container[key] = value
    else:
        raise ApiError(422, f"cannot add at /{'/'.join(tokens)}")


def apply_patch(document: JsonDict, content_type: str, body: Any) -> JsonDict:
    media = content_type.split(";", maxsplit=1)[0].strip()
    if media == "application/json-patch+json":
        if not isinstance(body, list):
            raise ApiError(400, "a JSON patch is a list of operations")
        patched = json_patch(document, body)
    elif media == "application/merge-patch+json":
        patched = merge_patch(document, body)
    elif media == "application/strategic-merge-patch+json":
        patched = strategic_merge_patch(document, body)
    else:
        raise ApiError(415, f"the body of the request was in an unknown format - {media}")
    if not isinstance(patched, dict):
        raise ApiError(422, "a patch must leave an object")
    return patched


# --- the store --------------------------------------------------------------------------------

Key = tuple[str, str, str]  # (resource, namespace or "", name)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    content_type: str | None
    status: int  # 0 while not answered yet


@dataclass
class _Fault:
    method: str
    path_glob: str
    remaining: int
    status: int | None
    delay_s: float
    action: Callable[[], None] | None = None

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method)
            and fnmatch.fnmatchcase(path, self.path_glob)
        )


@dataclass
class _DisruptionBudget:
    namespace: str
    name: str
    selector: str
    disruptions_allowed: int


@dataclass(frozen=True)
class _Change:
    resource_version: int
    type: str
    resource: str
    obj: JsonDict


@dataclass(eq=False)  # identity: each open watch is its own
class _Watcher:
    resource: str
    namespace: str | None
    selector: str | None
    queue: asyncio.Queue[_Change | None] = field(default_factory=asyncio.Queue)


class _Store:
    """Objects, the global resourceVersion and the change history. Lives on the server loop."""

    def __init__(self, history_limit: int) -> None:
        self.objects: dict[Key, JsonDict] = {}
        self.resource_version = 0
        self.history: deque[_Change] = deque()
        self.history_limit = history_limit
        # A watch may resume from any version >= this one; older ones answer 410 Expired.
        self.oldest_resumable = 0
        self.watchers: set[_Watcher] = set()

    def next_version(self) -> str:
        self.resource_version += 1
        return str(self.resource_version)

    def get(self, resource: str, namespace: str, name: str) -> JsonDict:
        obj = self.objects.get((resource, namespace, name))
        if obj is None:
            raise ApiError(404, f'{resource} "{name}" not found')
        return obj

    def create(self, resource: str, namespace: str, obj: JsonDict) -> JsonDict:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "metadata.name: Required value")
        if (resource, namespace, name) in self.objects:
            raise ApiError(409, f'{resource} "{name}" already exists', "AlreadyExists")
        if namespace:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta.setdefault("creationTimestamp", now_rfc3339())
        meta["resourceVersion"] = self.next_version()
        self.objects[(resource, namespace, name)] = obj
        self._record("ADDED", resource, obj)
        return obj

    def replace(self, resource: str, namespace: str, name: str, new: JsonDict) -> JsonDict:
        """Store ``new`` over the current object: 409 on a stale resourceVersion; a no-op
        update keeps the version and emits nothing, as the API server does."""
        old = self.objects.get((resource, namespace, name))
        if old is None:
            raise ApiError(404, f'{resource} "{name}" not found')
        meta = new.setdefault("metadata", {})
        sent_version = meta.get("resourceVersion")
        if (
            sent_version not in (None, "")
            and str(sent_version) != old["metadata"]["resourceVersion"]
        ):
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        for immutable in ("name", "uid", "creationTimestamp", "namespace"):
            if immutable in old["metadata"]:
                meta[immutable] = old["metadata"][immutable]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old
        meta["resourceVersion"] = self.next_version()
        self.objects[(resource, namespace, name)] = new
        self._record("MODIFIED", resource, new)
        return new

    def delete(self, resource: str, namespace: str, name: str) -> JsonDict:
        obj = self.objects.pop((resource, namespace, name), None)
        if obj is None:
            raise ApiError(404, f'{resource} "{name}" not found')
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self.next_version()
        self._record("DELETED", resource, obj)
        return obj

    def list(self, resource: str, namespace: str | None, selector: str | None) -> list[JsonDict]:
        return [
            obj
            for (res, ns, _), obj in sorted(self.objects.items())
            if res == resource
            and (namespace is None or ns == namespace)
            and selector_matches(selector, obj["metadata"].get("labels"))
        ]

    def forget_history(self) -> None:
        self.history.clear()
        self.oldest_resumable = self.resource_version

    def _record(self, change_type: str, resource: str, obj: JsonDict) -> None:
        change = _Change(
            int(obj["metadata"]["resourceVersion"]), change_type, resource, copy.deepcopy(obj)
        )
        self.history.append(change)
        while len(self.history) > self.history_limit:
            dropped = self.history.popleft()
            self.oldest_resumable = dropped.resource_version
        for watcher in self.watchers:
            watcher.queue.put_nowait(change)


# --- the server -------------------------------------------------------------------------------

_CORE = "/api/v1"
_LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
_CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
_WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


class FakeKube:
    """The fake API server. Use :func:`running_fake_kube` or ``start()``/``stop()``."""

    def __init__(self, *, history_limit: int = 1000) -> None:
        self._history_limit = history_limit
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fakekube", daemon=True)
        self._store: _Store | None = None
        self._runner: web.AppRunner | None = None
        self._faults: list[_Fault] = []
        self._budgets: list[_DisruptionBudget] = []
        self._requests: list[RecordedRequest] = []
        self._missing_namespaces: set[str] = set()
        self._tokens: dict[str, JsonDict] = {}
        self.url = ""

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self.url = self._run(self._start())

    def stop(self) -> None:
        with suppress(Exception):
            self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> str:
        self._store = _Store(self._history_limit)
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.25)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        for watcher in self.store.watchers:
            watcher.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def store(self) -> _Store:
        assert self._store is not None, "the fake is not started"
        return self._store

    def _run(self, coro: Any) -> Any:
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=10)

    def _call(self, fn: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return fn()  # already on the server loop (an action run by before_next)

        async def on_loop() -> T:
            return fn()

        result: T = self._run(on_loop())
        return result

    # seeding -----------------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        ready: bool | None = True,
        unschedulable: bool = False,
        taints: Sequence[Mapping[str, str]] = (),
        conditions: Sequence[Mapping[str, str]] = (),
    ) -> JsonDict:
        node: JsonDict = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {},
            "status": {"conditions": [dict(c) for c in conditions]},
        }
        if annotations:
            node["metadata"]["annotations"] = dict(annotations)
        if unschedulable:
            node["spec"]["unschedulable"] = True
        if taints:
            node["spec"]["taints"] = [dict(t) for t in taints]
        if ready is not None:
            node["status"]["conditions"].append(
                {"type": "Ready", "status": "True" if ready else "False", "reason": "Kubelet"}
            )
        return self._call(lambda: copy.deepcopy(self.store.create("nodes", "", node)))

    def add_pod(
        self,
        namespace: str,
        name: str,
        *,
        node_name: str | None = None,
        phase: str | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        gpus: int = 0,
        gpu_limits_only: bool = False,
        containers: int = 1,
        scheduling_gates: Sequence[str] = (),
    ) -> JsonDict:
        resources: JsonDict = {}
        if gpus:
            amount = {"nvidia.com/gpu": str(gpus)}
            resources = (
                {"limits": amount} if gpu_limits_only else {"requests": amount, "limits": amount}
            )
        pod: JsonDict = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {
                "containers": [
                    {"name": f"c{i}", "image": "busybox", "resources": copy.deepcopy(resources)}
                    for i in range(containers)
                ],
                "terminationGracePeriodSeconds": 30,
            },
            "status": {"phase": phase or ("Running" if node_name else "Pending")},
        }
        if annotations:
            pod["metadata"]["annotations"] = dict(annotations)
        if node_name:
            pod["spec"]["nodeName"] = node_name
        if scheduling_gates:
            pod["spec"]["schedulingGates"] = [{"name": g} for g in scheduling_gates]
        return self._call(lambda: copy.deepcopy(self.store.create("pods", namespace, pod)))

    def add_disruption_budget(
        self, namespace: str, name: str, selector: str, disruptions_allowed: int = 0
    ) -> None:
        """A PodDisruptionBudget, reduced to what eviction needs: how many more evictions of
        matching pods it allows."""
        self._call(
            lambda: self._budgets.append(
                _DisruptionBudget(namespace, name, selector, disruptions_allowed)
            )
        )

    def modify_node(self, name: str, change: Callable[[JsonDict], None]) -> JsonDict:
        """Someone else edits the node (bumps its resourceVersion)."""
        return self._modify("nodes", "", name, change)

    def modify_pod(self, namespace: str, name: str, change: Callable[[JsonDict], None]) -> JsonDict:
        return self._modify("pods", namespace, name, change)

    def modify_lease(
        self, namespace: str, name: str, change: Callable[[JsonDict], None]
    ) -> JsonDict:
        return self._modify("leases", namespace, name, change)

    def _modify(
        self, resource: str, namespace: str, name: str, change: Callable[[JsonDict], None]
    ) -> JsonDict:
        def edit() -> JsonDict:
            obj = copy.deepcopy(self.store.get(resource, namespace, name))
            obj["metadata"].pop("resourceVersion", None)
            change(obj)
            return copy.deepcopy(self.store.replace(resource, namespace, name, obj))

        return self._call(edit)

    def remove_pod(self, namespace: str, name: str) -> None:
        """The pod is gone for good (its kubelet finished terminating it)."""
        self._call(lambda: self.store.delete("pods", namespace, name))

    def add_token(
        self, token: str, username: str, extra: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        """A bearer token the server authenticates as ``username`` with ``extra`` (a bound
        ServiceAccount token carries its pod's name and uid there). A CSR records its
        requester from the token, never from the body, as the API server does."""
        info = {"username": username, "uid": str(uuid.uuid4()),
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {k: list(v) for k, v in (extra or {}).items()}}
        self._call(lambda: self._tokens.__setitem__(token, info))

    def csr(self, name: str) -> JsonDict:
        return self._call(
            lambda: copy.deepcopy(self.store.get("certificatesigningrequests", "", name))
        )

    def csrs(self) -> list[JsonDict]:
        return self._call(
            lambda: copy.deepcopy(self.store.list("certificatesigningrequests", None, None))
        )

    def add_webhook_configuration(self, configuration: JsonDict) -> JsonDict:
        """A MutatingWebhookConfiguration (cluster-scoped), as ``kubectl apply`` left it."""
        obj = copy.deepcopy(configuration)
        return self._call(
            lambda: copy.deepcopy(self.store.create("mutatingwebhookconfigurations", "", obj))
        )

    def webhook_configuration(self, name: str) -> JsonDict:
        return self._call(
            lambda: copy.deepcopy(self.store.get("mutatingwebhookconfigurations", "", name))
        )

    def remove_node(self, name: str) -> None:
        self._call(lambda: self.store.delete("nodes", "", name))

    def remove_namespace(self, namespace: str) -> None:
        """Every namespace exists unless removed: creating a lease in a removed one answers 404
        as the API server does."""
        self._call(lambda: self._missing_namespaces.add(namespace))

    def forget_history(self) -> None:
        """Compact the watch history: resuming from any earlier version now answers 410."""
        self._call(self.store.forget_history)

    # faults ------------------------------------------------------------------------------------

    def fail_next(
        self, method: str, path_glob: str, status: int, times: int = 1, *, delay_s: float = 0.0
    ) -> None:
        """The next ``times`` requests matching (``method`` may be ``*``) answer ``status``,
        after ``delay_s``, without being applied: a request the server never carried out."""
        self._call(
            lambda: self._faults.append(_Fault(method, path_glob, times, status, delay_s))
        )

    def delay_next(self, method: str, path_glob: str, seconds: float, times: int = 1) -> None:
        """The next ``times`` requests matching are answered after ``seconds``."""
        self._call(lambda: self._faults.append(_Fault(method, path_glob, times, None, seconds)))

    def before_next(
        self, method: str, path_glob: str, action: Callable[[], None], times: int = 1
    ) -> None:
        """Run ``action`` (say, someone else's edit) just before the next matching request is
        handled: the way to stage a real race between a read and a write."""
        self._call(lambda: self._faults.append(_Fault(method, path_glob, times, None, 0.0, action)))

    def clear_faults(self, path_glob: str | None = None) -> None:
        """Forget the injected faults (only those for ``path_glob``, when given)."""

        def clear() -> None:
            self._faults[:] = [
                f for f in self._faults if path_glob is not None and f.path_glob != path_glob
            ]

        self._call(clear)

    # inspection --------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._call(lambda: self.store.resource_version)

    def node(self, name: str) -> JsonDict:
        return self._call(lambda: copy.deepcopy(self.store.get("nodes", "", name)))

    def pod(self, namespace: str, name: str) -> JsonDict | None:
        return self._call(lambda: copy.deepcopy(self.store.objects.get(("pods", namespace, name))))

    def lease(self, namespace: str, name: str) -> JsonDict | None:
        return self._call(
            lambda: copy.deepcopy(self.store.objects.get(("leases", namespace, name)))
        )

    def events(self) -> list[JsonDict]:
        """Every Event recorded, oldest first."""
        events = self._call(lambda: copy.deepcopy(self.store.list("events", None, None)))
        return sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def requests(self, method: str | None = None, path_glob: str = "*") -> list[RecordedRequest]:
        return self._call(
            lambda: [
                r
                for r in self._requests
                if (method is None or r.method == method) and fnmatch.fnmatchcase(r.path, path_glob)
            ]
        )

    def writes(self) -> list[RecordedRequest]:
        return [r for r in self.requests() if r.method != "GET"]

    def clear_requests(self) -> None:
        self._call(self._requests.clear)

    # HTTP --------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        # Logged on arrival (a watch may stay open for the whole test); the status once answered.
        arrived = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            body=body,
            content_type=request.headers.get("Content-Type"),
            status=0,
        )
        self._requests.append(arrived)
        fault = next((f for f in self._faults if f.matches(request.method, request.path)), None)
        response: web.StreamResponse
        if fault is not None:
            fault.remaining -= 1
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault.action is not None:
                fault.action()
        if fault is not None and fault.status is not None:
            response = _json(status_body(fault.status, "injected fault"), fault.status)
        else:
            try:
                response = await handler(request)
            except ApiError as err:
                response = _json(
                    status_body(err.code, err.message, err.reason, err.causes), err.code
                )
            except web.HTTPNotFound:
                response = _json(status_body(404, "the server could not find the resource"), 404)
            except web.HTTPMethodNotAllowed:
                response = _json(status_body(405, "method not allowed", "MethodNotAllowed"), 405)
        for index, logged in enumerate(self._requests):  # clear_requests() may have run
            if logged is arrived:
                self._requests[index] = dataclasses.replace(arrived, status=response.status)
        return response

    def _add_routes(self, app: web.Application) -> None:
        node = _CORE + "/nodes/{name}"
        pods = _CORE + "/namespaces/{ns}/pods"
        app.router.add_get(_CORE + "/nodes", self._list_nodes)
        app.router.add_get(node, self._get_node)
        app.router.add_patch(node, self._patch_node)
        app.router.add_put(node, self._put_node)
        app.router.add_get(node + "/status", self._get_node)
        app.router.add_patch(node + "/status", self._patch_node_status)
        app.router.add_post(_CORE + "/namespaces/{ns}/events", self._create_event)
        app.router.add_get(_CORE + "/namespaces/{ns}/events", self._list_events)
        app.router.add_get(_CORE + "/namespaces/{ns}/events/{name}", self._get_event)
        app.router.add_post(_LEASES, self._create_lease)
        app.router.add_get(_LEASES + "/{name}", self._get_lease)
        app.router.add_put(_LEASES + "/{name}", self._put_lease)
        app.router.add_get(_CORE + "/pods", self._list_pods)
        app.router.add_get(pods, self._list_pods)
        app.router.add_get(pods + "/{name}", self._get_pod)
        app.router.add_patch(pods + "/{name}", self._patch_pod)
        app.router.add_delete(pods + "/{name}", self._delete_pod)
        app.router.add_post(pods + "/{name}/eviction", self._evict_pod)
        app.router.add_get(_WEBHOOKS + "/{name}", self._get_webhook_configuration)
        app.router.add_patch(_WEBHOOKS + "/{name}", self._patch_webhook_configuration)
        app.router.add_post(_CSRS, self._create_csr)
        app.router.add_get(_CSRS, self._list_csrs)
        app.router.add_get(_CSRS + "/{name}", self._get_csr)
        app.router.add_put(_CSRS + "/{name}/approval", self._put_csr_approval)
        app.router.add_put(_CSRS + "/{name}/status", self._put_csr_status)

    # nodes

    async def _list_nodes(self, request: web.Request) -> web.StreamResponse:
        return self._list_response(request, "nodes", None, "NodeList")

    async def _get_node(self, request: web.Request) -> web.StreamResponse:
        return _json(self.store.get("nodes", "", request.match_info["name"]))

    async def _patch_node(self, request: web.Request) -> web.StreamResponse:
        return _json(await self._patch(request, "nodes", "", subresource=None))

    async def _patch_node_status(self, request: web.Request) -> web.StreamResponse:
        return _json(await self._patch(request, "nodes", "", subresource="status"))

    async def _put_node(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        old = self.store.get("nodes", "", name)
        new = await _body_object(request)
        new["status"] = copy.deepcopy(old.get("status", {}))
        return _json(self.store.replace("nodes", "", name, new))

    async def _patch(
        self, request: web.Request, resource: str, namespace: str, subresource: str | None
    ) -> JsonDict:
        name = request.match_info["name"]
        old = self.store.get(resource, namespace, name)
        patched = apply_patch(old, request.content_type, json.loads(await request.read()))
        if subresource == "status":
            # The status endpoint changes status only (and may carry a version precondition).
            new = copy.deepcopy(old)
            new["status"] = patched.get("status", {})
            new["metadata"]["resourceVersion"] = patched["metadata"].get("resourceVersion")
        else:
            new = patched
            new["status"] = copy.deepcopy(old.get("status", {}))
        if resource == "pods":
            _check_gates_only_removed(old, new)
        return self.store.replace(resource, namespace, name, new)

    # events

    async def _create_event(self, request: web.Request) -> web.StreamResponse:
        event = await _body_object(request)
        return _json(self.store.create("events", request.match_info["ns"], event), 201)

    async def _get_event(self, request: web.Request) -> web.StreamResponse:
        return _json(self.store.get("events", request.match_info["ns"], request.match_info["name"]))

    async def _list_events(self, request: web.Request) -> web.StreamResponse:
        return self._list_response(request, "events", request.match_info["ns"], "EventList")

    # leases

    async def _create_lease(self, request: web.Request) -> web.StreamResponse:
        lease = await _body_object(request)
        namespace = request.match_info["ns"]
        if namespace in self._missing_namespaces:
            raise ApiError(404, f'namespaces "{namespace}" not found')
        return _json(self.store.create("leases", namespace, lease), 201)

    async def _get_lease(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        return _json(self.store.get("leases", ns, name))

    async def _put_lease(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        lease = await _body_object(request)
        return _json(self.store.replace("leases", ns, name, lease))

    # admission webhook configurations

    async def _get_webhook_configuration(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        return _json(self.store.get("mutatingwebhookconfigurations", "", name))

    async def _patch_webhook_configuration(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        old = self.store.get("mutatingwebhookconfigurations", "", name)
        patched = apply_patch(old, request.content_type, json.loads(await request.read()))
        return _json(self.store.replace("mutatingwebhookconfigurations", "", name, patched))

    # certificate signing requests (cluster-scoped; requester from the bearer token)

    async def _create_csr(self, request: web.Request) -> web.StreamResponse:
        csr = await _body_object(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        who = self._tokens.get(token, {"username": "system:anonymous", "uid": "", "groups": [],
                                       "extra": {}})
        csr.setdefault("spec", {}).update(copy.deepcopy(who))
        csr["status"] = {}
        return _json(self.store.create("certificatesigningrequests", "", csr), 201)

    async def _list_csrs(self, request: web.Request) -> web.StreamResponse:
        items = self.store.list("certificatesigningrequests", None, None)
        wanted = request.query.get("fieldSelector", "")
        if wanted.startswith("spec.signerName="):
            signer = wanted.removeprefix("spec.signerName=")
            items = [i for i in items if i["spec"].get("signerName") == signer]
        return _json({"apiVersion": "certificates.k8s.io/v1",
                      "kind": "CertificateSigningRequestList",
                      "metadata": {"resourceVersion": str(self.store.resource_version)},
                      "items": items})

    async def _get_csr(self, request: web.Request) -> web.StreamResponse:
        return _json(self.store.get("certificatesigningrequests", "", request.match_info["name"]))

    async def _put_csr_approval(self, request: web.Request) -> web.StreamResponse:
        return await self._put_csr_part(request, approval=True)

    async def _put_csr_status(self, request: web.Request) -> web.StreamResponse:
        return await self._put_csr_part(request, approval=False)

    async def _put_csr_part(self, request: web.Request, *, approval: bool) -> web.StreamResponse:
        """approval writes Approved/Denied conditions only; status the certificate and the
        other conditions - each ignores the rest of the body, as the subresources do."""
        name = request.match_info["name"]
        old = self.store.get("certificatesigningrequests", "", name)
        body = await _body_object(request)
        new = copy.deepcopy(old)
        new["metadata"]["resourceVersion"] = body.get("metadata", {}).get("resourceVersion")
        conditions = (body.get("status") or {}).get("conditions") or []
        decisions = {"Approved", "Denied"}
        kept = [c for c in old.get("status", {}).get("conditions") or []
                if (c.get("type") in decisions) != approval]
        sent = [c for c in conditions if (c.get("type") in decisions) == approval]
        new.setdefault("status", {})["conditions"] = kept + sent
        if {"Approved", "Denied"} <= {c.get("type") for c in new["status"]["conditions"]}:
            raise ApiError(422, "status.conditions: Approved and Denied are exclusive")
        if not approval and "certificate" in (body.get("status") or {}):
            new["status"]["certificate"] = body["status"]["certificate"]
        return _json(self.store.replace("certificatesigningrequests", "", name, new))

    # pods

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info.get("ns")
        if request.query.get("watch") in ("1", "true", "True"):
            return await self._watch(request, "pods", namespace)
        return self._list_response(request, "pods", namespace, "PodList")

    async def _get_pod(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        return _json(self.store.get("pods", ns, name))

    async def _patch_pod(self, request: web.Request) -> web.StreamResponse:
        return _json(await self._patch(request, "pods", request.match_info["ns"], None))

    async def _delete_pod(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        options = await _body_object(request, required=False)
        grace = request.query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        return _json(self._delete_pod_gracefully(ns, name, None if grace is None else int(grace)))

    async def _evict_pod(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        eviction = await _body_object(request)
        pod = self.store.get("pods", ns, name)
        for budget in self._budgets:
            if budget.namespace == ns and selector_matches(
                budget.selector, pod["metadata"].get("labels")
            ):
                if budget.disruptions_allowed <= 0:
                    raise ApiError(
                        429,
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        causes=[
                            {
                                "reason": "DisruptionBudget",
                                "message": f"The disruption budget {budget.name} needs more "
                                "healthy pods than it would have",
                            }
                        ],
                    )
                budget.disruptions_allowed -= 1
        grace = (eviction.get("deleteOptions") or {}).get("gracePeriodSeconds")
        self._delete_pod_gracefully(ns, name, grace)
        return _json(status_body(201, ""), 201)

    def _delete_pod_gracefully(self, namespace: str, name: str, grace: int | None) -> JsonDict:
        """Grace 0, or a pod never scheduled, goes at once; otherwise the pod is marked for
        deletion and stays until :meth:`remove_pod` (its kubelet's job)."""
        pod = self.store.get("pods", namespace, name)
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        if grace == 0 or not pod["spec"].get("nodeName"):
            return self.store.delete("pods", namespace, name)
        marked = copy.deepcopy(pod)
        marked["metadata"]["deletionTimestamp"] = now_rfc3339(grace)
        marked["metadata"]["deletionGracePeriodSeconds"] = grace
        return self.store.replace("pods", namespace, name, marked)

    # lists and watches

    def _list_response(
        self, request: web.Request, resource: str, namespace: str | None, kind: str
    ) -> web.StreamResponse:
        items = self.store.list(resource, namespace, request.query.get("labelSelector"))
        return _json(
            {
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, resource: str, namespace: str | None
    ) -> web.StreamResponse:
        selector = request.query.get("labelSelector")
        since = request.query.get("resourceVersion", "")
        timeout_s = float(request.query.get("timeoutSeconds", "1800"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        store = self.store
        watcher = _Watcher(resource, namespace, selector)

        def wanted(change: _Change) -> bool:
            return (
                change.resource == resource
                and (namespace is None or change.obj["metadata"].get("namespace") == namespace)
                and selector_matches(selector, change.obj["metadata"].get("labels"))
            )

        if since not in ("", "0") and int(since) < store.oldest_resumable:
            expired = status_body(
                410,
                f"too old resource version: {since} ({store.oldest_resumable})",
                "Expired",
            )
            await _write_event(response, "ERROR", expired)
            return response
        if since in ("", "0"):
            backlog = [
                _Change(store.resource_version, "ADDED", resource, copy.deepcopy(obj))
                for obj in store.list(resource, namespace, selector)
            ]
        else:
            backlog = [c for c in store.history if c.resource_version > int(since) and wanted(c)]
        store.watchers.add(watcher)
        try:
            for change in backlog:
                await _write_event(response, change.type, change.obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while (remaining := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is None:
                    break
                if wanted(item):
                    await _write_event(response, item.type, item.obj)
        except ConnectionResetError:
            pass  # the client went away
        finally:
            store.watchers.discard(watcher)
        return response


def _check_gates_only_removed(old: JsonDict, new: JsonDict) -> None:
    """Scheduling gates may only be removed after creation (API server validation)."""
    before = {g.get("name") for g in old.get("spec", {}).get("schedulingGates") or []}
    after = {g.get("name") for g in new.get("spec", {}).get("schedulingGates") or []}
    if after - before:
        raise ApiError(422, "spec.schedulingGates: Forbidden: only deletion is allowed")


async def _body_object(request: web.Request, *, required: bool = True) -> JsonDict:
    raw = await request.read()
    if not raw:
        if required:
            raise ApiError(400, "request body required")
        return {}
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be an object")
    return body


async def _write_event(response: web.StreamResponse, change_type: str, obj: JsonDict) -> None:
    line = json.dumps({"type": change_type, "object": obj}) + "\n"
    await response.write(line.encode())


def _json(obj: JsonDict, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(obj).encode(), status=status, content_type="application/json"
    )


@contextmanager
def running_fake_kube(*, history_limit: int = 1000) -> Iterator[FakeKube]:
    fake = FakeKube(history_limit=history_limit)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
