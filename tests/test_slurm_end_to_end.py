"""The whole loop on a real Slurm: agents report over a real Mosquitto, the coordinator
(``--backend slurm``) decides, and slurmctld ends up with the drain, the requeue and the
resume; one slurmctld and four slurmd (8 fake GPUs each) shared by the module, put back to
four idle nodes and no jobs before every test. No Slurm mock anywhere."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.settings import CoordinatorSettings
from tests.agent_process import agent_process
from tests.brokers import Mosquitto
from tests.coordinator_harness import (
    RunningCoordinator,
    coordinator_settings,
    eventually,
    fleet,
    running_coordinator,
)
from tests.slurm_cluster import NODES, SlurmCluster, missing_binaries, running_slurm

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.slurm]

# a decision round is a second long: waiting this long shows nothing more is coming
QUIET_S = 2.0
# a requeued job may start again after cred_expire (10 s) + the scheduler's 2 s tick
RERUN_S = 45.0


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): scripts/test.sh "
                    "installs it, or apt-get install -y slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's slurmd and munged need root: run the tests as root "
                    "(scripts/test.sh in CI is)")
    with running_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The module's cluster, as a new one: no jobs, four idle nodes, none drained."""
    reset(slurm_cluster)
    return slurm_cluster


def reset(cluster: SlurmCluster) -> None:
    cluster.run("scancel", "--user=root", check=False)
    deadline = time.monotonic() + 30
    while True:
        nodes = [cluster.sinfo_node(n) for n in NODES]
        for node in nodes:
            if node["state_flags"] and "NOT_RESPONDING" not in node["state_flags"]:
                cluster.run("scontrol", "update", f"nodename={node['name']}", "state=RESUME",
                            check=False)  # fmt: skip
        active = [j for j in cluster.jobs() if j["job_state"] in {"RUNNING", "COMPLETING",
                                                                 "PENDING"}]  # fmt: skip
        if not active and all((n["state"], n["state_flags"]) == ("idle", []) for n in nodes):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the cluster did not come back idle: {nodes}, jobs {active}")
        time.sleep(0.1)


def settings(tmp: Path, mosquitto: Mosquitto, cluster: SlurmCluster,
             *flags: str, state: Path | None = None) -> CoordinatorSettings:
    return coordinator_settings(
        tmp, broker_url=mosquitto.url, kube=None, state_dir=state,
        flags=["--backend", "slurm", "--slurm-conf", str(cluster.conf),
               "--slurm-requeue-grace", "1", "--slurm-timeout", "3",
               "--max-unhealthy", "2", *flags],
    )  # fmt: skip


async def sinfo(cluster: SlurmCluster, name: str) -> dict[str, Any]:
    return await asyncio.to_thread(cluster.sinfo_node, name)


def drained(node: dict[str, Any]) -> bool:
    return "DRAIN" in node["state_flags"]


async def healthy_fleet(coordinator: RunningCoordinator) -> None:
    for name in NODES:
        await eventually(lambda n=name: coordinator.api.lifecycle(n), lambda s: s == "healthy",
                         what=f"{name} healthy")  # fmt: skip


def submit_logging_job(cluster: SlurmCluster, log: Path, *flags: str) -> int:
    """A job that notes where it starts and every USR1 it gets ('checkpoint now'), and keeps
    running: only a requeue moves it."""
    return cluster.submit(
        f'echo "start $SLURMD_NODENAME ${{SLURM_RESTART_COUNT:-0}}" >> {log}\n'
        f"trap 'echo \"usr1 $SLURMD_NODENAME\" >> {log}' USR1\n"
        "while true; do sleep 0.2; done\n",
        "--gres=gpu:2", *flags,
    )  # fmt: skip


async def running_on(cluster: SlurmCluster, job_id: int) -> str:
    job = await eventually(lambda: asyncio.to_thread(cluster.job, job_id),
                           lambda j: j is not None and j["job_state"] == "RUNNING",
                           what=f"job {job_id} running")  # fmt: skip
    return str(job["nodes"])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- marks ------------------------------------------------------------------------------------


async def test_an_xid_79_from_a_sim_agent_drains_exactly_its_node_naming_the_fault(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    scenario = tmp_path / "xid79.yaml"
    scenario.write_text("- {at: 2.0, gpu: 2, fault: xid, xid: 79}\n")
    sim = ("--sim-gpus", "8")
    # real agents report every second: a 3 s grace keeps them from looking silent
    async with running_coordinator(settings(tmp_path, mosquitto, slurm, "--offline-grace", "3")):
        with (
            agent_process(mosquitto.url, "node2", *sim, "--sim-scenario", str(scenario),
                          tmp=tmp_path),
            agent_process(mosquitto.url, "node3", *sim, tmp=tmp_path),
        ):  # fmt: skip
            node = await eventually(lambda: sinfo(slurm, "node2"), drained,
                                    within=30, what="node2 drained")  # fmt: skip
            await asyncio.sleep(QUIET_S)
            others = [await sinfo(slurm, n) for n in ("node1", "node3", "node4")]

    assert node["reason"].startswith("gpuwarden: XID 79 on GPU 2 (pending-reboot) [fact:")
    assert [(n["name"], n["state_flags"], n["reason"]) for n in others] == [
        (name, [], "") for name in ("node1", "node3", "node4")
    ]


async def test_recovery_resumes_the_node_gpuwarden_drained(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm)) as coordinator,
    ):
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        await agents.fault("node2", xid=79, gpu=2)
        await eventually(lambda: sinfo(slurm, "node2"), drained, what="node2 drained")
        await agents.reboot("node2")  # back on a new boot, healthy
        await eventually(lambda: coordinator.api.lifecycle("node2"), lambda s: s == "healthy",
                         what="node2 recovered")  # fmt: skip
        node = await eventually(lambda: sinfo(slurm, "node2"), lambda n: not drained(n),
                                what="node2 resumed")  # fmt: skip

    assert node["reason"] == ""
    assert node["state"] in {"idle", "mixed"}


async def test_a_node_an_administrator_drained_stays_drained(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    slurm.drain("node3", "admin: fan replaced, burn-in pending")
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm)) as coordinator,
    ):
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        await agents.fault("node3")
        await eventually(lambda: coordinator.api.lifecycle("node3"),
                         lambda s: s == "pending-reboot", what="node3 out")  # fmt: skip
        await agents.reboot("node3")
        await eventually(lambda: coordinator.api.lifecycle("node3"), lambda s: s == "healthy",
                         what="node3 back in gpuwarden's service")  # fmt: skip
        audit = await eventually(
            lambda: coordinator.api.audit("node3"),
            lambda entries: sum(e["kind"] == "action_finished" for e in entries) >= 3,
            what="the fault, the new boot and the recovery carried out",
        )
        node = await sinfo(slurm, "node3")

    assert drained(node)
    assert node["reason"] == "admin: fan replaced, burn-in pending"
    finished = [e for e in audit if e["kind"] == "action_finished"]
    assert all(e["outcome"] == "ok" for e in finished)
    assert "never resumes" in finished[-1]["reason"]


async def test_dry_run_drains_nothing_and_signals_no_job(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    log = tmp_path / "job.log"
    job_id = submit_logging_job(slurm, log)
    victim = await running_on(slurm, job_id)
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm, "--dry-run")) as coordinator,
    ):
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        await agents.fault(victim)
        audit = await eventually(
            coordinator.api.audit,
            lambda entries: any(e["task"] == f"slurm-job/{job_id}" for e in entries),
            what="the requeue decided (and only decided)",
        )
        await asyncio.sleep(QUIET_S + 1)  # past the grace: nothing may follow
        node = await sinfo(slurm, victim)
        job = await asyncio.to_thread(slurm.job, job_id)

    assert not drained(node)
    assert job is not None and (job["job_state"], job["restart_cnt"]) == ("RUNNING", 0)
    assert lines(log) == [f"start {victim} 0"]
    assert all(e["dry_run"] for e in audit if e["kind"] == "decision")
    assert not [e for e in audit if e["kind"] == "action_started"]


async def test_past_max_unhealthy_a_second_node_is_not_drained(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    flags = ("--max-unhealthy", "1")
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm, *flags)) as coordinator,
    ):
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        await agents.fault("node1")
        await eventually(lambda: sinfo(slurm, "node1"), drained, what="node1 drained")
        await agents.fault("node4")
        await asyncio.sleep(QUIET_S)
        second = await sinfo(slurm, "node4")
        lifecycle = await coordinator.api.lifecycle("node4")

    assert not drained(second)
    assert lifecycle == "healthy"


async def test_while_the_controller_is_down_the_drain_is_retried_and_nothing_is_lost(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    log = tmp_path / "job.log"
    job_id = submit_logging_job(slurm, log, "-w", "node2")
    await running_on(slurm, job_id)
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm)) as coordinator,
    ):
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        await asyncio.to_thread(slurm.stop_controller)
        try:
            await agents.fault("node2")
            await eventually(
                lambda: coordinator.api.audit("node2"),
                lambda audit: any(e["outcome"] == "failed" for e in audit),
                what="a drain attempt failing while slurmctld is down",
            )
        finally:
            await asyncio.to_thread(slurm.start_controller)
        node = await eventually(lambda: sinfo(slurm, "node2"), drained, within=30,
                                what="node2 drained once slurmctld is back")  # fmt: skip
        await eventually(lambda: asyncio.to_thread(slurm.job, job_id),
                         lambda j: j is not None and j["restart_cnt"] == 1, within=30,
                         what="its job requeued once slurmctld is back")  # fmt: skip
        marks = await coordinator.api.audit("node2")
        everything = await coordinator.api.audit()

    assert node["reason"].startswith("gpuwarden: XID 79 on GPU 0 (pending-reboot)")
    decisions = [e for e in marks if e["kind"] == "decision"]
    outcomes = [e["outcome"] for e in marks if e["kind"] == "action_finished"]
    assert len(decisions) == 1  # decided once, retried until it landed
    assert outcomes[0] == "failed" and outcomes[-1] == "ok"
    drain_landed = next(e["id"] for e in marks if e["outcome"] == "ok")
    job_actions = [e for e in everything if e["task"] == f"slurm-job/{job_id}"
                   and e["kind"] == "action_started"]  # fmt: skip
    assert [e["action"] for e in job_actions] == ["signal", "requeue"]
    assert job_actions[0]["id"] > drain_landed  # never requeued onto a node not yet drained
    assert lines(log)[:2] == ["start node2 0", "usr1 node2"]


async def test_a_coordinator_that_lost_its_state_reads_the_drain_back_from_slurm(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm,
                                     state=tmp_path / "first")) as coordinator,
    ):  # fmt: skip
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        await agents.fault("node2")
        await eventually(lambda: sinfo(slurm, "node2"), drained, what="node2 drained")
        reason = (await sinfo(slurm, "node2"))["reason"]
    fresh = settings(tmp_path, mosquitto, slurm, state=tmp_path / "second")
    async with running_coordinator(fresh) as restarted:
        lifecycle = await restarted.api.lifecycle("node2")
        await asyncio.sleep(QUIET_S)
        audit = await restarted.api.audit("node2")
        node = await sinfo(slurm, "node2")

    assert lifecycle == "pending-reboot"
    assert node["reason"] == reason  # the same decision: nothing rewritten
    (finished,) = [e for e in audit if e["kind"] == "action_finished"]
    assert (finished["outcome"], finished["details"]["changed"]) == ("ok", False)
    assert finished["reason"] == f"already drained: {reason}"


async def test_opted_in_a_pending_reboot_asks_slurm_to_reboot_the_node(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    flags = ("--slurm-reboot", "down")
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm, *flags)) as coordinator,
    ):
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        await agents.fault("node4")
        node = await eventually(
            lambda: sinfo(slurm, "node4"),
            lambda n: {"REBOOT_REQUESTED", "REBOOT_ISSUED"} & set(n["state_flags"]),
            what="a reboot of node4 asked of Slurm",
        )

    assert node["reason"].startswith("gpuwarden: XID 79 on GPU 0 (pending-reboot)")


async def test_a_nodes_gpus_count_as_slurm_configures_them_when_its_agent_sees_fewer(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        fleet(mosquitto.port) as agents,  # each fake agent reports 2 GPUs; GRES says gpu:8
        running_coordinator(settings(tmp_path, mosquitto, slurm)) as coordinator,
    ):
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        node = await eventually(lambda: coordinator.api.node("node1"),
                                lambda n: n["gpus_total"] == 8, what="node1 counted with 8 GPUs")
        cluster = await coordinator.api.get("/api/v1/cluster")

    assert (node["gpus_total"], node["gpus_healthy"]) == (8, 2)
    assert cluster["capacity"]["gpus_total"] == 8 * len(NODES)
    assert cluster["capacity"]["gpus_unhealthy"] == 6 * len(NODES)


# --- requeue ---------------------------------------------------------------------------------


async def test_a_job_on_a_drained_node_is_signalled_then_requeued_and_runs_elsewhere(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    log = tmp_path / "job.log"
    job_id = submit_logging_job(slurm, log)
    victim = await running_on(slurm, job_id)
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm)) as coordinator,
    ):
        await agents.join(*NODES)
        await healthy_fleet(coordinator)
        await agents.fault(victim, xid=79, gpu=1)
        await eventually(lambda: asyncio.to_thread(lines, log), lambda seen: len(seen) >= 3,
                         within=RERUN_S, what="the job signalled, then started again")
        audit = await coordinator.api.audit()

    first, signalled, again = lines(log)[:3]
    assert (first, signalled) == (f"start {victim} 0", f"usr1 {victim}")
    where, restarts = again.split()[1:]
    assert (where != victim, restarts) == (True, "1")
    actions = [(e["action"], e["outcome"]) for e in audit
               if e["task"] == f"slurm-job/{job_id}" and e["kind"] == "action_finished"]
    assert actions == [("signal", "ok"), ("requeue", "ok")]


async def test_a_job_that_cannot_be_requeued_is_cancelled_with_the_reason(
    slurm: SlurmCluster, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    log = tmp_path / "job.log"
    job_id = submit_logging_job(slurm, log, "--no-requeue")
    victim = await running_on(slurm, job_id)
    async with (
        fleet(mosquitto.port) as agents,
        running_coordinator(settings(tmp_path, mosquitto, slurm)),
    ):
        await agents.join(*NODES)
        await agents.fault(victim)
        job = await eventually(lambda: asyncio.to_thread(slurm.job, job_id),
                               lambda j: j is not None and j["job_state"] == "CANCELLED",
                               what=f"job {job_id} cancelled")  # fmt: skip

    assert job["admin_comment"].startswith(
        f"gpuwarden: cancelled: node {victim} taken out of service and the job was submitted "
        "--no-requeue"
    )
    assert lines(log) == [f"start {victim} 0", f"usr1 {victim}"]
