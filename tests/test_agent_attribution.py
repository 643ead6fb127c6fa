"""Attribution in the agent's state message: the ``--proc-root`` setting, the node's mode, and
the simulated node's owners."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.daemon import Agent
from agent.settings import AgentSettings, parse_settings
from agent.sim.fake_pynvml import FakeNvml
from agent.sim.fake_usage import FakeProcess
from agent.sim.workloads import MAX_WORKERS
from gpuwarden_common.wire import Attribution, OwnerKind, StateMessage
from tests.proc_tree import make_proc_tree

SLURM = "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n"


def settings(*flags: str) -> AgentSettings:
    base = ["--node", "n1", "--cluster", "c1", "--http", "off", "--kmsg", "off"]
    return parse_settings([*base, *flags], {})


async def one_state(agent_settings: AgentSettings, nvml: FakeNvml) -> StateMessage:
    agent = Agent(agent_settings, nvml, boot_id="b")
    await agent.start_nvml()
    try:
        state, _ = await agent.sample()
    finally:
        agent.collector.shutdown()
    return state


def test_the_proc_root_is_the_hosts_proc_unless_told() -> None:
    assert settings().proc_root == Path("/proc")
    assert settings("--proc-root", "/host/proc").proc_root == Path("/host/proc")


def test_proc_root_off_turns_attribution_off_from_the_flag_or_its_twin() -> None:
    assert settings("--proc-root", "off").proc_root is None
    assert parse_settings(["--node", "n1"], {"GPUWARDEN_PROC_ROOT": "off"}).proc_root is None


async def test_the_state_names_each_gpus_owners_read_from_the_proc_root(tmp_path: Path) -> None:
    fake = FakeNvml(gpus=2, workloads=False)
    fake.start_process(1, FakeProcess(200, 2**30))
    make_proc_tree(tmp_path, {200: SLURM})

    state = await one_state(settings("--proc-root", str(tmp_path)), fake)

    assert state.attribution == Attribution.CGROUP
    assert state.gpus[0].owners == []
    assert [(o.kind, o.slurm_job_id) for o in state.gpus[1].owners] == [
        (OwnerKind.SLURM_JOB, 4242)
    ]


async def test_with_attribution_off_the_state_says_so(tmp_path: Path) -> None:
    state = await one_state(settings("--proc-root", "off"), FakeNvml(gpus=1))

    assert state.attribution == Attribution.OFF
    assert {o.kind for o in state.gpus[0].owners} == {OwnerKind.UNKNOWN}


async def test_an_agent_outside_the_host_pid_namespace_says_so(tmp_path: Path) -> None:
    fake = FakeNvml(gpus=1, workloads=False)
    fake.start_process(0, FakeProcess(200, 2**30))
    make_proc_tree(tmp_path, {200: SLURM}, namespace="pid:[4026532999]")

    state = await one_state(settings("--proc-root", str(tmp_path)), fake)

    assert state.attribution == Attribution.NO_HOST_PID
    assert [o.kind for o in state.gpus[0].owners] == [OwnerKind.UNKNOWN]


async def test_the_simulated_node_runs_pods_and_a_host_session() -> None:
    state = await one_state(settings("--gpu-backend", "sim"), FakeNvml(gpus=8, seed="n1"))

    kinds = [o.kind for g in state.gpus for o in g.owners]
    pods = {o.pod_uid for g in state.gpus for o in g.owners if o.kind == OwnerKind.K8S_POD}
    assert state.attribution == Attribution.CGROUP
    assert set(kinds) == {OwnerKind.K8S_POD, OwnerKind.HOST}
    assert len(pods) == 3  # training, fine-tuning, inference
    assert all(g.owners for g in state.gpus)


async def test_a_simulated_node_keeps_its_pod_uids_across_restarts_and_nodes_differ() -> None:
    def uids(state: StateMessage) -> set[str | None]:
        return {o.pod_uid for g in state.gpus for o in g.owners}

    first = await one_state(settings("--gpu-backend", "sim"), FakeNvml(gpus=8, seed="n1"))
    again = await one_state(settings("--gpu-backend", "sim"), FakeNvml(gpus=8, seed="n1"))
    other = await one_state(settings("--gpu-backend", "sim"), FakeNvml(gpus=8, seed="n2"))

    assert uids(first) == uids(again)
    assert uids(first) - {None} and not (uids(first) - {None}) & uids(other)


async def test_a_simulated_pod_can_run_several_worker_processes_per_gpu() -> None:
    fake = FakeNvml(gpus=2, seed="n1", processes_per_gpu=4)

    state = await one_state(settings("--gpu-backend", "sim"), fake)

    main = state.gpus[1].owners[0]  # GPU 1: the training pod's main container, no sidecar
    assert (main.kind, len(main.pids)) == (OwnerKind.K8S_POD, 4)


def test_the_simulated_workers_per_gpu_come_from_a_flag() -> None:
    assert settings().sim_processes_per_gpu == 1
    assert settings("--sim-processes-per-gpu", "6").sim_processes_per_gpu == 6


async def test_a_simulated_node_reads_a_proc_tree_named_other_than_proc(tmp_path: Path) -> None:
    # how the benchmarks give a simulated node cgroup files on disk to read
    fake = FakeNvml(gpus=1, workloads=False)
    fake.start_process(0, FakeProcess(200, 2**30, cgroup="0::/\n"))
    make_proc_tree(tmp_path, {200: SLURM})

    state = await one_state(settings("--gpu-backend", "sim", "--proc-root", str(tmp_path)), fake)

    assert [o.kind for o in state.gpus[0].owners] == [OwnerKind.SLURM_JOB]


def test_more_workers_per_gpu_than_a_simulated_gpu_has_pids_for_is_refused() -> None:
    with pytest.raises(ValueError, match="workers per GPU"):
        FakeNvml(gpus=1, processes_per_gpu=MAX_WORKERS + 1)
