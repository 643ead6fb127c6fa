"""What happens to the jobs of a node taken out of service on Slurm: which are signalled and
requeued, which cancelled, and what the grace changed. Pure, on squeue JSON captured from real
Slurm 22.05 daemons (tests/data/slurm/capture.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.backends.slurm.jobs import (
    JobPlan,
    SlurmJob,
    Step,
    after_grace,
    parse_squeue,
    plan_node_out,
)
from coordinator.backends.slurm.nodes import SlurmReplyError

DATA = Path(__file__).parent / "data" / "slurm"


def captured(name: str) -> dict[int, SlurmJob]:
    return {j.id: j for j in parse_squeue((DATA / name).read_text())}


def job(job_id: int = 7, state: str = "RUNNING", *, restarts: int = 0,
        requeueable: bool = True, nodes: frozenset[str] = frozenset({"node2"})) -> SlurmJob:
    return SlurmJob(id=job_id, state=state, nodes=nodes, restarts=restarts,
                    requeueable=requeueable)  # fmt: skip


def steps(plans: list[JobPlan]) -> dict[int, Step]:
    return {p.job.id: p.step for p in plans}


def test_squeue_gives_each_jobs_state_nodes_restarts_and_requeue_flag() -> None:
    jobs = captured("squeue-running.json")
    assert jobs[1] == replace(jobs[1], state="RUNNING", nodes=frozenset({"node2"}), restarts=0,
                              requeueable=True)  # fmt: skip
    assert jobs[2].requeueable is False


def test_a_requeued_job_is_pending_with_its_restart_counted() -> None:
    requeued = captured("squeue-requeued.json")[1]
    assert (requeued.state, requeued.restarts, requeued.nodes) == ("PENDING", 1, frozenset())


def test_a_running_job_is_requeued_and_a_no_requeue_job_cancelled() -> None:
    plans = plan_node_out(captured("squeue-running.json").values(), "node2", max_requeues=3)
    assert steps(plans) == {1: Step.REQUEUE, 2: Step.CANCEL}
    assert "--no-requeue" in plans[1].why


def test_a_job_pending_already_is_not_requeued_twice() -> None:
    plans = plan_node_out(captured("squeue-requeued.json").values(), "node2", max_requeues=3)
    assert steps(plans) == {2: Step.CANCEL}


def test_jobs_on_other_nodes_are_not_touched() -> None:
    assert plan_node_out(captured("squeue-running.json").values(), "node1", 3) == []


def test_a_job_at_its_max_requeues_is_cancelled_with_the_count() -> None:
    (plan,) = plan_node_out([job(restarts=3)], "node2", max_requeues=3)
    assert plan.step is Step.CANCEL
    assert "requeued 3 times already (max 3)" in plan.why


def test_below_its_max_requeues_a_job_is_requeued() -> None:
    assert steps(plan_node_out([job(restarts=2)], "node2", max_requeues=3)) == {7: Step.REQUEUE}


def test_a_job_spanning_several_nodes_is_hit_by_any_of_them() -> None:
    wide = job(nodes=frozenset({"node1", "node2", "node3"}))
    assert steps(plan_node_out([wide], "node3", max_requeues=3)) == {7: Step.REQUEUE}


# --- after the grace --------------------------------------------------------------------------

REQUEUE = JobPlan(job(), Step.REQUEUE, "node node2 taken out of service")
CANCEL = JobPlan(job(requeueable=False), Step.CANCEL, "submitted --no-requeue")


def test_a_job_still_running_after_its_grace_is_requeued() -> None:
    assert after_grace(REQUEUE, job()).step is Step.REQUEUE


def test_a_job_that_requeued_itself_on_the_signal_is_not_requeued_twice() -> None:
    final = after_grace(REQUEUE, job(state="PENDING", restarts=1))
    assert final.step is Step.NONE
    assert "not requeued twice" in final.why


def test_a_job_slurm_requeued_and_restarted_elsewhere_is_left_alone() -> None:
    elsewhere = job(state="RUNNING", restarts=1, nodes=frozenset({"node3"}))
    assert after_grace(REQUEUE, elsewhere).step is Step.NONE


def test_a_job_the_signal_killed_is_requeued() -> None:
    assert after_grace(REQUEUE, job(state="FAILED")).step is Step.REQUEUE


@pytest.mark.parametrize("state", ["COMPLETED", "CANCELLED", "TIMEOUT"])
def test_a_job_that_ended_on_its_own_during_the_grace_is_left_alone(state: str) -> None:
    assert after_grace(REQUEUE, job(state=state)).step is Step.NONE


def test_a_job_gone_from_the_queue_is_left_alone() -> None:
    assert after_grace(REQUEUE, None).step is Step.NONE


def test_a_job_that_cannot_be_requeued_is_cancelled_if_still_running() -> None:
    assert after_grace(CANCEL, job(requeueable=False)).step is Step.CANCEL
    assert after_grace(CANCEL, job(state="FAILED", requeueable=False)).step is Step.NONE


def test_errors_in_squeues_answer_are_an_error() -> None:
    with pytest.raises(SlurmReplyError):
        parse_squeue('{"errors": [{"error": "Unspecified error"}], "jobs": []}')
