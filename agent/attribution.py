"""Who a process works for, read from its cgroup: pure parsing, no I/O.

``/proc/<pid>/cgroup`` names the cgroup a process runs in: one ``0::<path>`` line on cgroup
v2, one ``<id>:<controllers>:<path>`` line per hierarchy on v1. The path says whose work it
is, by the naming conventions of whoever made the cgroup:

- the kubelet: a pod cgroup ``pod<uid>`` (cgroupfs driver) or
  ``kubepods[-<qos>]-pod<uid with _ for ->.slice`` (systemd driver), with the container's
  cgroup below it: ``<id>`` (containerd, docker), ``crio-<id>`` (CRI-O), or
  ``cri-containerd-<id>.scope`` / ``crio-<id>.scope`` / ``docker-<id>.scope`` (systemd);
- Slurm: ``/slurm[_<node>]/uid_<uid>/job_<id>/step_<step>`` (cgroup/v1 plugin) or
  ``/system.slice/[<node>_]slurmstepd.scope/job_<id>/step_<step>`` (cgroup/v2 plugin);
- docker and podman outside Kubernetes: ``/docker/<id>``, ``docker-<id>.scope``,
  ``libpod-<id>.scope``.

Paths are matched by their components anywhere, never anchored at the root: an agent in a
private cgroup namespace (the default for containers on cgroup v2) reads other processes'
paths relative to its own cgroup (``/../../kubepods-besteffort-pod<uid>.slice/...``), so the
top of the hierarchy may be out of sight.

A path with none of these is the host's (a login session, a system service); a file with no
path at all says nothing (``unknown``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpuwarden_common.wire import OwnerKind

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
_ID = r"[0-9a-f]{64}"  # container ids, as every runtime writes them into cgroup names

# the pod's own cgroup: "pod<uid>" (cgroupfs) or "...kubepods...-pod<uid>.slice" (systemd)
_POD = re.compile(rf"^(?:pod|[a-z-]*kubepods[a-z-]*-pod)({_UID})(?:\.slice)?$")
# the container's cgroup directly below its pod
_POD_CONTAINER = re.compile(rf"^(?:(?:cri-containerd|crio|docker)-)?({_ID})(?:\.scope)?$")
_SLURM_V1_ROOT = re.compile(r"^slurm(?:_.+)?$")
_SLURM_UID = re.compile(r"^uid_\d+$")
_SLURM_JOB = re.compile(r"^job_(\d+)$")
# a container without a pod: docker's cgroupfs "/docker/<id>", or a systemd scope
_DOCKER_DIR = re.compile(rf"^({_ID})$")
_CONTAINER_SCOPE = re.compile(rf"^(?:docker|libpod)-({_ID})\.scope$")


@dataclass(frozen=True, slots=True)
class Workload:
    """What one process works for. Fields that its kind does not have stay None."""

    kind: OwnerKind
    pod_uid: str | None = None
    container_id: str | None = None
    slurm_job_id: int | None = None


UNKNOWN = Workload(OwnerKind.UNKNOWN)
HOST = Workload(OwnerKind.HOST)


def parse_cgroup(text: str) -> Workload:
    """The owner named by the content of a ``/proc/<pid>/cgroup`` file.

    Every line is looked at: on cgroup v1 Slurm moves a job's tasks into its own controllers
    while the ``name=systemd`` line still shows slurmd's service, so a workload named on any
    line wins over the host.
    """
    paths = [path for path in map(_path_of, text.splitlines()) if path is not None]
    if not paths:
        return UNKNOWN
    for path in paths:
        found = _parse_path(path)
        if found is not None:
            return found
    return HOST


def _path_of(line: str) -> str | None:
    """The path of one ``<hierarchy>:<controllers>:<path>`` line (a path may hold ':')."""
    parts = line.split(":", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].startswith("/"):
        return None
    return parts[2]


def _parse_path(path: str) -> Workload | None:
    parts = [p for p in path.split("/") if p and p != ".."]
    return _pod(parts) or _slurm_job(parts) or _container(parts)


def _pod(parts: list[str]) -> Workload | None:
    for i, part in enumerate(parts):
        match = _POD.match(part)
        if match is None:
            continue
        uid = match.group(1).replace("_", "-")
        container = None
        if i + 1 < len(parts):
            below = _POD_CONTAINER.match(parts[i + 1])
            container = below.group(1) if below else None
        return Workload(OwnerKind.K8S_POD, pod_uid=uid, container_id=container)
    return None


def _slurm_job(parts: list[str]) -> Workload | None:
    for i, part in enumerate(parts):
        match = _SLURM_JOB.match(part)
        if match is None or i == 0:
            continue
        parent = parts[i - 1]
        v1 = _SLURM_UID.match(parent) and i >= 2 and _SLURM_V1_ROOT.match(parts[i - 2])
        v2 = parent.endswith("slurmstepd.scope")
        if v1 or v2:
            return Workload(OwnerKind.SLURM_JOB, slurm_job_id=int(match.group(1)))
    return None


def _container(parts: list[str]) -> Workload | None:
    for i, part in enumerate(parts):
        scope = _CONTAINER_SCOPE.match(part)
        if scope is not None:
            return Workload(OwnerKind.CONTAINER, container_id=scope.group(1))
        if part == "docker" and i + 1 < len(parts):
            below = _DOCKER_DIR.match(parts[i + 1])
            if below is not None:
                return Workload(OwnerKind.CONTAINER, container_id=below.group(1))
    return None
