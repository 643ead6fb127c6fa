"""Reaching the API server: client construction (in-cluster, kubeconfig), and every call
run in a thread with a request timeout, retried when transient, and observed.

Every call is a blocking call of the official client: it runs in a thread with a request
timeout (a slow API server never stalls the event loop), is counted by an optional observer
(Prometheus action latencies), and must be one of :data:`API_CALLS_USED` (the RBAC test
checks the ClusterRole against that set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Mapping
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

from coordinator.backends.kubernetes.contract import API_CALLS_USED
from gpuwarden_common.backoff import backoff_delay

log = structlog.get_logger(__name__)
T = TypeVar("T")


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


def survivable(exc: BaseException) -> bool:
    """An answer or a failure of the API server (worth retrying later), not a bug of ours."""
    return isinstance(exc, ApiException) or is_transient(exc)


def status_of(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, ApiException) else None


def describe(exc: BaseException) -> str:
    """A one-line account of a failed call (the API server's own message when it sent one)."""
    if isinstance(exc, ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = str(json.loads(exc.body or "{}").get("message", ""))
        return f"HTTP {exc.status} {exc.reason or ''}".strip() + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return str(exc.status)
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
        return "timeout"
    return "error"


def json_body(response: Any) -> Any:
    """Read a raw (``_preload_content=False``) response: the API's own JSON, without the
    client's model round trip."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


# A thread that outlives its request timeout by this much is abandoned (its result dropped).
_THREAD_SLACK_S: Final = 2.0
_MIN_REQUEST_TIMEOUT_S: Final = 0.5


class KubeApi:
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
            outcome = outcome_of(exc)
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


def utc_now() -> datetime:
    moment = datetime.now(UTC)
    # MicroTime is parsed with a fixed six-digit fraction; isoformat() drops the fraction when
    # it is zero, which the API server would reject.
    return moment if moment.microsecond else moment.replace(microsecond=1)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
