"""Owners of GPU processes read from /proc, cached by pid (agent/proc_owners.py), over a fake
/proc tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.attribution import Workload
from agent.proc_owners import ProcDir, ProcessTable
from gpuwarden_common.wire import Attribution, OwnerKind
from tests.proc_tree import make_proc_tree

UID = "5f0b6a1e-8c3d-4b2a-9e7f-0123456789ab"
CID = "3b1e4f5a6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071"
POD_CGROUP = f"0::/kubepods/burstable/pod{UID}/{CID}\n"
SLURM_CGROUP = "0::/system.slice/slurmstepd.scope/job_77/step_0/user/task_0\n"


def no_names(pid: int) -> str | None:
    return None


def table(root: Path, **kwargs: int) -> ProcessTable:
    return ProcessTable(ProcDir(root), process_name=no_names, **kwargs)


def test_a_process_is_attributed_from_its_cgroup_file(tmp_path: Path) -> None:
    t = table(make_proc_tree(tmp_path, {4100: POD_CGROUP, 4200: SLURM_CGROUP}))

    assert t.facts(4100).workload == Workload(OwnerKind.K8S_POD, pod_uid=UID, container_id=CID)
    assert t.facts(4200).workload == Workload(OwnerKind.SLURM_JOB, slurm_job_id=77)
    assert t.attribution is Attribution.CGROUP


def test_a_process_without_a_proc_entry_is_unknown(tmp_path: Path) -> None:
    t = table(make_proc_tree(tmp_path, {}))

    assert t.facts(4100).workload.kind is OwnerKind.UNKNOWN


def test_a_known_process_is_not_read_again_in_later_passes(tmp_path: Path) -> None:
    root = make_proc_tree(tmp_path, {4100: POD_CGROUP})
    t = table(root)
    t.facts(4100)
    t.end_pass()
    (root / "4100" / "cgroup").write_text(SLURM_CGROUP)

    assert t.facts(4100).workload.kind is OwnerKind.K8S_POD


def test_a_process_missing_from_a_pass_is_forgotten(tmp_path: Path) -> None:
    # its pid may be reused by another process by the time NVML shows it again
    root = make_proc_tree(tmp_path, {4100: POD_CGROUP})
    t = table(root)
    t.facts(4100)
    t.end_pass()
    t.end_pass()  # a pass in which NVML no longer showed it
    (root / "4100" / "cgroup").write_text(SLURM_CGROUP)

    assert t.facts(4100).workload.kind is OwnerKind.SLURM_JOB


def test_the_cache_keeps_at_most_its_bound(tmp_path: Path) -> None:
    t = table(make_proc_tree(tmp_path, {p: POD_CGROUP for p in range(100, 110)}), max_entries=4)

    for pid in range(100, 110):
        t.facts(pid)

    assert len(t) == 4


def test_process_names_are_looked_up_once_per_process(tmp_path: Path) -> None:
    asked: list[int] = []

    def name(pid: int) -> str:
        asked.append(pid)
        return f"proc-{pid}"

    t = ProcessTable(ProcDir(make_proc_tree(tmp_path, {4100: POD_CGROUP})), process_name=name)
    for _ in range(3):
        assert t.facts(4100).name == "proc-4100"
        t.end_pass()

    assert asked == [4100]


def test_an_agent_in_another_pid_namespace_attributes_nothing(tmp_path: Path) -> None:
    # a container without hostPID: NVML's host pids name other processes there, or none
    t = table(make_proc_tree(tmp_path, {4100: POD_CGROUP}, namespace="pid:[4026532512]"))

    assert t.facts(4100).workload.kind is OwnerKind.UNKNOWN
    assert t.attribution is Attribution.NO_HOST_PID


def test_an_unreadable_namespace_link_does_not_stop_attribution(tmp_path: Path) -> None:
    t = table(make_proc_tree(tmp_path, {4100: POD_CGROUP}, namespace=None))

    assert t.facts(4100).workload.kind is OwnerKind.K8S_POD
    assert t.attribution is Attribution.CGROUP


def test_without_a_proc_source_attribution_is_off() -> None:
    t = ProcessTable(None, process_name=lambda pid: "python")

    assert t.facts(4100).workload.kind is OwnerKind.UNKNOWN
    assert t.facts(4100).name == "python"
    assert t.attribution is Attribution.OFF


@pytest.mark.skipif(not Path("/proc/self/cgroup").exists(), reason="needs Linux /proc")
def test_the_real_proc_names_an_owner_for_this_very_process() -> None:
    t = ProcessTable(ProcDir(Path("/proc")), process_name=no_names)

    assert t.facts(os.getpid()).workload.kind is not OwnerKind.UNKNOWN
