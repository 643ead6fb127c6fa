"""Each GPU's owners, end to end through the real collector: the fake pynvml's processes and
a fake /proc tree with their cgroup files."""

from __future__ import annotations

from pathlib import Path

from agent.nvml_collector import GpuCollector
from agent.proc_owners import ProcDir
from agent.sim.fake_pynvml import FakeNvml
from agent.sim.fake_usage import FakeProcess
from gpuwarden_common.wire import Attribution, GpuOwner, OwnerKind
from tests.proc_tree import make_proc_tree

GIB = 1024**3
UID = "5f0b6a1e-8c3d-4b2a-9e7f-0123456789ab"
UID_ = UID.replace("-", "_")
MAIN = "a" * 64
SIDECAR = "b" * 64


def container_cgroup(container: str) -> str:
    return (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{container}.scope\n"
    )


SLURM = "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n"
SESSION = "0::/user.slice/user-1000.slice/session-4.scope\n"
CGROUPS = {
    100: container_cgroup(MAIN),
    101: container_cgroup(MAIN),
    102: container_cgroup(SIDECAR),
    200: SLURM,
    300: SESSION,
}


class CountingProc(ProcDir):
    """The /proc tree, counting the cgroup files read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    def cgroup(self, pid: int) -> str | None:
        self.reads += 1
        return super().cgroup(pid)


def node(tmp_path: Path) -> tuple[FakeNvml, CountingProc, GpuCollector]:
    """GPU 0: a pod (two processes in its main container, one in a sidecar); GPU 1: a Slurm
    job and a login session; GPU 2: idle."""
    fake = FakeNvml(gpus=3, workloads=False)
    for pid, gib in ((100, 30), (101, 10), (102, 1)):
        fake.start_process(0, FakeProcess(pid, gib * GIB))
    fake.start_process(1, FakeProcess(200, 20 * GIB))
    fake.start_process(1, FakeProcess(300, 1 * GIB))
    proc = CountingProc(make_proc_tree(tmp_path, CGROUPS))
    collector = GpuCollector(fake, process_name=lambda pid: None, proc=proc)
    collector.start()
    return fake, proc, collector


def owners(collector: GpuCollector) -> dict[int, list[GpuOwner]]:
    states, errors = collector.collect()
    assert errors == ()
    return {s.index: s.owners for s in states}


def test_the_processes_of_one_container_are_one_owner_with_their_memory_summed(
    tmp_path: Path,
) -> None:
    _, _, collector = node(tmp_path)

    main = owners(collector)[0][0]

    assert (main.kind, main.pod_uid, main.container_id) == (OwnerKind.K8S_POD, UID, MAIN)
    assert main.pids == [100, 101]
    assert main.used_memory_bytes == 40 * GIB


def test_two_containers_of_one_pod_are_two_owners_with_the_same_pod_uid(tmp_path: Path) -> None:
    _, _, collector = node(tmp_path)

    gpu0 = owners(collector)[0]

    assert [(o.pod_uid, o.container_id) for o in gpu0] == [(UID, MAIN), (UID, SIDECAR)]


def test_a_gpu_shared_by_a_slurm_job_and_the_host_has_one_owner_each(tmp_path: Path) -> None:
    _, _, collector = node(tmp_path)

    gpu1 = owners(collector)[1]

    assert [(o.kind, o.slurm_job_id, o.pids) for o in gpu1] == [
        (OwnerKind.HOST, None, [300]),
        (OwnerKind.SLURM_JOB, 4242, [200]),
    ]


def test_an_idle_gpu_has_no_owner(tmp_path: Path) -> None:
    _, _, collector = node(tmp_path)

    assert owners(collector)[2] == []


def test_cgroup_files_are_read_once_per_process_however_many_passes(tmp_path: Path) -> None:
    _, proc, collector = node(tmp_path)

    for _ in range(5):
        owners(collector)

    assert proc.reads == len(CGROUPS)


def test_a_new_process_is_read_when_it_appears(tmp_path: Path) -> None:
    fake, proc, collector = node(tmp_path)
    owners(collector)
    make_proc_tree(tmp_path, {400: SLURM}, namespace=None)
    fake.start_process(2, FakeProcess(400, GIB))

    gpu2 = owners(collector)[2]

    assert [(o.kind, o.pids) for o in gpu2] == [(OwnerKind.SLURM_JOB, [400])]
    assert proc.reads == len(CGROUPS) + 1


def test_a_process_whose_proc_entry_is_gone_has_an_unknown_owner(tmp_path: Path) -> None:
    fake, _, collector = node(tmp_path)
    fake.start_process(2, FakeProcess(999, GIB))  # NVML still lists it; /proc has no entry

    assert [(o.kind, o.pids) for o in owners(collector)[2]] == [(OwnerKind.UNKNOWN, [999])]


def test_the_collector_says_how_it_attributed(tmp_path: Path) -> None:
    _, _, collector = node(tmp_path)
    owners(collector)

    assert collector.attribution is Attribution.CGROUP


def test_without_a_proc_source_every_process_is_under_one_unknown_owner() -> None:
    fake = FakeNvml(gpus=1, workloads=False)
    fake.start_process(0, FakeProcess(100, GIB))
    fake.start_process(0, FakeProcess(200, GIB))
    collector = GpuCollector(fake, process_name=lambda pid: None)
    collector.start()

    (owner,) = owners(collector)[0]

    assert (owner.kind, owner.pids) == (OwnerKind.UNKNOWN, [100, 200])
    assert collector.attribution is Attribution.OFF


def test_graphics_processes_are_listed_and_attributed_too(tmp_path: Path) -> None:
    fake, _, collector = node(tmp_path)
    make_proc_tree(tmp_path, {500: SESSION}, namespace=None)
    fake.start_process(2, FakeProcess(500, GIB, graphics=True))

    states, _ = collector.collect()

    assert [p.pid for p in states[2].processes] == [500]
    assert [o.kind for o in states[2].owners] == [OwnerKind.HOST]


def test_a_process_with_compute_and_graphics_contexts_is_listed_once(tmp_path: Path) -> None:
    fake, _, collector = node(tmp_path)
    fake.start_process(1, FakeProcess(200, 20 * GIB, graphics=True))

    states, _ = collector.collect()

    assert [p.pid for p in states[1].processes] == [200, 300]
