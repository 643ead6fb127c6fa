"""Tell the coordinator that a training task saved a checkpoint, from inside its pod.

Preemption picks, among equal-priority victims, the task that loses the least work (GPUs x
time since its last checkpoint), and a node fault reports the work lost; both read the pod
annotation ``gpuwarden.io/last-checkpoint``. A training loop sets it after each save::

    from coordinator.checkpoint import record_checkpoint

    save(state, path)
    record_checkpoint()          # now; or record_checkpoint(when=saved_at)

or, from a shell step, ``gpuwarden checkpoint``. The pod is found through the downward API
(``POD_NAME`` and ``POD_NAMESPACE``) and the API server through the pod's service account,
which needs ``get`` and ``patch`` on pods in its namespace (``examples/train_with_checkpoints.py``
shows the pod spec and the Role).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from coordinator.pods import LAST_CHECKPOINT_ANNOTATION, format_time, parse_time

POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"
DEFAULT_KUBE = "in-cluster"
DEFAULT_DEADLINE_S = 10.0

_DOWNWARD_API_HINT = (
    "set them with the downward API in the pod spec: env: [{name: POD_NAME, valueFrom: "
    "{fieldRef: {fieldPath: metadata.name}}}, {name: POD_NAMESPACE, valueFrom: {fieldRef: "
    "{fieldPath: metadata.namespace}}}]"
)


class CheckpointError(RuntimeError):
    """The checkpoint time could not be recorded on the pod (the message says why)."""


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def this_pod(environ: Mapping[str, str] | None = None) -> PodRef:
    """The pod this process runs in, from the downward API's environment variables."""
    env = os.environ if environ is None else environ
    name, namespace = env.get(POD_NAME_ENV, ""), env.get(POD_NAMESPACE_ENV, "")
    missing = [
        var for var, value in ((POD_NAME_ENV, name), (POD_NAMESPACE_ENV, namespace)) if not value
    ]
    if missing:
        raise CheckpointError(f"{' and '.join(missing)} not set; {_DOWNWARD_API_HINT}")
    return PodRef(namespace, name)


def _epoch(when: datetime | float | None) -> float:
    if when is None:
        return time.time()
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise CheckpointError("a checkpoint time needs a time zone (use datetime.now(UTC))")
        return when.timestamp()
    return float(when)


async def record_checkpoint_async(
    when: datetime | float | None = None,
    *,
    pod: PodRef | None = None,
    kube: str = DEFAULT_KUBE,
    environ: Mapping[str, str] | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> datetime:
    """Set ``gpuwarden.io/last-checkpoint`` on ``pod`` (default: this pod) to ``when``
    (default: now; a datetime with a zone, or epoch seconds). Returns the time recorded
    (to the second). ``kube``: ``in-cluster`` (the pod's service account), ``auto`` or
    ``kubeconfig:PATH``. Raises :class:`CheckpointError`; the API calls are retried on
    transient failures within ``deadline_s``."""
    # imported here: the client is slow to import, and a pod without the downward API's
    # variables should hear so at once
    from coordinator.backends.kubernetes.client import (  # noqa: PLC0415
        KubeConfigError,
        RetryPolicy,
        kube_client_from,
    )
    from coordinator.backends.kubernetes.pod_api import KubePods  # noqa: PLC0415

    target = pod if pod is not None else this_pod(environ)
    saved_at = math.floor(_epoch(when))  # the annotation holds whole seconds
    stamp = format_time(saved_at)
    try:
        client = kube_client_from(kube, environ=environ)
    except KubeConfigError as exc:
        raise CheckpointError(str(exc)) from None
    retry = RetryPolicy(deadline_s=deadline_s, request_timeout_s=min(5.0, deadline_s))
    pods = KubePods(client, retry=retry, close_client=True)
    try:
        result = await pods.annotate(
            target.namespace, target.name, {LAST_CHECKPOINT_ANNOTATION: stamp}
        )
    finally:
        await pods.close()
    if not result.ok:
        raise CheckpointError(f"cannot annotate pod {target}: {result.detail}")
    return datetime.fromtimestamp(saved_at, UTC)


def record_checkpoint(
    when: datetime | float | None = None,
    *,
    pod: PodRef | None = None,
    kube: str = DEFAULT_KUBE,
    environ: Mapping[str, str] | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> datetime:
    """:func:`record_checkpoint_async` for synchronous training loops (it blocks up to
    ``deadline_s``). Inside a running event loop, await the async one instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise CheckpointError(
            "record_checkpoint() called inside a running event loop; "
            "use: await record_checkpoint_async()"
        )
    return asyncio.run(
        record_checkpoint_async(when, pod=pod, kube=kube, environ=environ, deadline_s=deadline_s)
    )


def _parse_when(value: str) -> float:
    moment = parse_time(value)
    if moment is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an RFC 3339 time (like 2025-03-01T12:00:00Z)"
        )
    return moment


def _parse_pod(value: str) -> PodRef:
    namespace, slash, name = value.partition("/")
    if not slash or not namespace or not name:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAMESPACE/NAME")
    return PodRef(namespace, name)


def build_parser(prog: str = "gpuwarden checkpoint") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Record a training checkpoint on this pod (the annotation "
        f"{LAST_CHECKPOINT_ANNOTATION}), so preemption and requeue know how much work a "
        "stop would lose. Run it inside a task's pod after each checkpoint is saved.",
    )
    parser.add_argument(
        "--at",
        type=_parse_when,
        default=None,
        metavar="TIME",
        help="when the checkpoint was saved, RFC 3339 (default: now)",
    )
    parser.add_argument(
        "--pod",
        type=_parse_pod,
        default=None,
        metavar="NAMESPACE/NAME",
        help="the pod (default: $POD_NAMESPACE/$POD_NAME)",
    )
    parser.add_argument(
        "--kube",
        default=DEFAULT_KUBE,
        help="in-cluster | auto | kubeconfig:PATH (default %(default)s)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE_S,
        metavar="SECONDS",
        help="give up after this long (default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "gpuwarden checkpoint") -> int:
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        target = args.pod if args.pod is not None else this_pod()
        recorded = record_checkpoint(args.at, pod=target, kube=args.kube, deadline_s=args.deadline)
    except CheckpointError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    print(f"{LAST_CHECKPOINT_ANNOTATION}={format_time(recorded.timestamp())} on pod {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m coordinator.checkpoint"))
