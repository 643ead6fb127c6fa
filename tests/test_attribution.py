"""Who owns a process: the text of ``/proc/<pid>/cgroup`` -> a Kubernetes pod, a Slurm job, a
container, the host, or unknown (agent/attribution.py, pure).

Every layout gpuwarden supports is one row below, written as the kernel prints it.
"""

from __future__ import annotations

import pytest

from agent.attribution import Workload, parse_cgroup
from gpuwarden_common.wire import OwnerKind

UID = "5f0b6a1e-8c3d-4b2a-9e7f-0123456789ab"
UID_ = UID.replace("-", "_")  # the systemd driver's spelling inside slice names
CID = "3b1e4f5a6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071"
STATIC_UID = "6b4f0cd8e2a94b1f8c3a7d5e9f0b1c2d"  # a static pod: the kubelet's config hash


def pod(uid: str = UID, container: str | None = CID) -> Workload:
    return Workload(OwnerKind.K8S_POD, pod_uid=uid, container_id=container)


V1_CGROUPFS_BURSTABLE = f"""\
12:pids:/kubepods/burstable/pod{UID}/{CID}
11:memory:/kubepods/burstable/pod{UID}/{CID}
10:devices:/kubepods/burstable/pod{UID}/{CID}
1:name=systemd:/kubepods/burstable/pod{UID}/{CID}
"""

V1_SLURM = """\
12:freezer:/slurm/uid_1000/job_4242/step_0/task_0
11:memory:/slurm/uid_1000/job_4242/step_0/task_0
10:devices:/slurm/uid_1000/job_4242/step_0
4:cpuset:/slurm/uid_1000/job_4242/step_0
1:name=systemd:/system.slice/slurmd.service
"""

KUBERNETES_LAYOUTS = {
    # cgroup v2, systemd driver (kubeadm's default since 1.22), containerd
    "v2 systemd containerd burstable": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n",
        pod(),
    ),
    "v2 systemd containerd guaranteed": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        pod(),
    ),
    "v2 systemd containerd besteffort": (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n",
        pod(),
    ),
    "v2 systemd cri-o": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"crio-{CID}.scope\n",
        pod(),
    ),
    "v2 systemd docker (cri-dockerd)": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"docker-{CID}.scope\n",
        pod(),
    ),
    "v2 cgroupfs containerd": (f"0::/kubepods/burstable/pod{UID}/{CID}\n", pod()),
    "v2 cgroupfs guaranteed": (f"0::/kubepods/pod{UID}/{CID}\n", pod()),
    "v2 cgroupfs cri-o": (f"0::/kubepods/besteffort/pod{UID}/crio-{CID}\n", pod()),
    "v1 cgroupfs": (V1_CGROUPFS_BURSTABLE, pod()),
    "v1 systemd containerd": (
        f"11:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n"
        f"1:name=systemd:/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        pod(),
    ),
    # an agent in a private cgroup namespace (the default on cgroup v2) sees other pods'
    # paths relative to its own cgroup, so the kubepods root may be out of sight
    "v2 systemd seen from a private cgroup namespace": (
        f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        pod(),
    ),
    "v2 cgroupfs seen from a private cgroup namespace": (
        f"0::/../../../burstable/pod{UID}/{CID}\n",
        pod(),
    ),
    # kind and other kubelets with their own root slice
    "v2 systemd under kubelet.slice": (
        f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        pod(),
    ),
    "a static pod (uid without dashes)": (
        f"0::/kubepods/burstable/pod{STATIC_UID}/{CID}\n",
        pod(uid=STATIC_UID),
    ),
    "a sub-cgroup the container made inside itself": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/"
        "init.scope\n",
        pod(),
    ),
    "the pod's own cgroup, no container below it": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice\n",
        pod(container=None),
    ),
}


@pytest.mark.parametrize(
    ("text", "owner"), KUBERNETES_LAYOUTS.values(), ids=KUBERNETES_LAYOUTS.keys()
)
def test_a_process_in_a_kubernetes_pod_is_owned_by_the_pod_uid_and_container(
    text: str, owner: Workload
) -> None:
    assert parse_cgroup(text) == owner


SLURM_LAYOUTS = {
    "v1 (controllers name the job, systemd names slurmd)": V1_SLURM,
    "v1 with several slurmd on one host": (
        "4:memory:/slurm_node07/uid_1000/job_4242/step_batch/task_0\n"
    ),
    "v1 external step (pam_slurm_adopt)": "4:memory:/slurm/uid_1000/job_4242/step_extern\n",
    "v2": "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n",
    "v2 with several slurmd on one host": (
        "0::/system.slice/node07_slurmstepd.scope/job_4242/step_batch/user/task_0\n"
    ),
}


@pytest.mark.parametrize("text", SLURM_LAYOUTS.values(), ids=SLURM_LAYOUTS.keys())
def test_a_process_in_a_slurm_job_is_owned_by_the_job_id(text: str) -> None:
    assert parse_cgroup(text) == Workload(OwnerKind.SLURM_JOB, slurm_job_id=4242)


CONTAINER_LAYOUTS = {
    "docker, cgroupfs": f"0::/docker/{CID}\n",
    "docker, systemd": f"0::/system.slice/docker-{CID}.scope\n",
    "podman": f"0::/machine.slice/libpod-{CID}.scope/container\n",
    "rootless podman": (
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n"
    ),
}


@pytest.mark.parametrize("text", CONTAINER_LAYOUTS.values(), ids=CONTAINER_LAYOUTS.keys())
def test_a_container_outside_kubernetes_is_owned_by_its_container_id(text: str) -> None:
    assert parse_cgroup(text) == Workload(OwnerKind.CONTAINER, container_id=CID)


HOST_LAYOUTS = {
    "a login session": "0::/user.slice/user-1000.slice/session-4.scope\n",
    "a system service": "0::/system.slice/jupyterhub.service\n",
    "the root cgroup": "0::/\n",
    "slurmd itself, outside any job": "0::/system.slice/slurmd.service\n",
    "a slice named like a pod, but no uid": "0::/kubepods.slice/kubepods-podnotauid.slice\n",
    "a directory named like a container, but not an id": "0::/docker/not-a-container-id\n",
}


@pytest.mark.parametrize("text", HOST_LAYOUTS.values(), ids=HOST_LAYOUTS.keys())
def test_a_process_in_no_known_workload_cgroup_belongs_to_the_host(text: str) -> None:
    assert parse_cgroup(text) == Workload(OwnerKind.HOST)


def test_an_empty_cgroup_file_says_nothing_so_the_owner_is_unknown() -> None:
    assert parse_cgroup("") == Workload(OwnerKind.UNKNOWN)


def test_lines_that_are_not_cgroup_entries_are_skipped() -> None:
    text = f"garbage\n\n0::/kubepods/pod{UID}/{CID}\n"

    assert parse_cgroup(text) == pod()


def test_a_workload_named_by_any_v1_controller_wins_over_a_host_path_on_another() -> None:
    # Slurm's cgroup/v1 plugin moves tasks in its controllers only; the systemd line still
    # shows slurmd's service
    assert parse_cgroup(V1_SLURM).kind is OwnerKind.SLURM_JOB


def test_a_pod_uid_is_given_with_dashes_whatever_the_driver_wrote() -> None:
    systemd = parse_cgroup(f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope")
    cgroupfs = parse_cgroup(f"0::/kubepods/pod{UID}/crio-{CID}")

    assert systemd.pod_uid == cgroupfs.pod_uid == UID

