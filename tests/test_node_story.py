"""What the coordinator's API tells about a node and the cluster's numbers, from a coordinator
fed agent messages directly (no broker) and acting through the local actuator."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.audit import AuditLog
from coordinator.backends.local.actuator import LocalActuator
from coordinator.daemon import Coordinator
from coordinator.definitions import GPU_BUCKETS, GPUS_TOTAL, TEAM_TERMS, UNASSIGNED, Term
from gpuwarden_common.health import Action, Finding, Health, Severity
from tests.brokers import free_port
from tests.coordinator_harness import FakeAgent, coordinator_settings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    settings = coordinator_settings(
        tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", kube=None,
        flags=["--max-unhealthy", "100%"],
    )  # fmt: skip
    with AuditLog(tmp_path / "audit.sqlite3") as audit:
        yield Coordinator(settings, actuator=LocalActuator(), audit=audit)


def faulty(name: str, gpu: int, action: Action = Action.REBOOT) -> FakeAgent:
    agent = FakeAgent(name)
    agent.health, agent.action, agent.faulty_gpu = Health.UNHEALTHY, action, gpu
    agent.findings = (Finding(check="xid", severity=Severity.CRITICAL, code="XID-79",
                              message="XID 79: GPU has fallen off the bus", action=action,
                              gpu_index=gpu),)  # fmt: skip
    return agent


async def take_out(coordinator: Coordinator, agent: FakeAgent) -> None:
    coordinator.on_event(agent.xid_event(79, agent.faulty_gpu or 0, agent.action))
    coordinator.on_state(agent.state())
    assert await coordinator.remediator.evaluate(agent.name) is not None


async def test_a_node_out_for_an_xid_gives_its_finding_first_seen_and_count(
    coordinator: Coordinator,
) -> None:
    agent = faulty("gpu-1", gpu=2)
    await take_out(coordinator, agent)
    coordinator.on_event(agent.xid_event(79, 2, Action.REBOOT))  # the same XID again
    node = coordinator.node("gpu-1")
    assert node is not None
    assert re.fullmatch(r"XID 79 on GPU 2 at \d\d:\d\d UTC", node["reason"])
    (finding,) = node["findings"]
    assert (finding["code"], finding["gpu_index"], finding["count"]) == ("XID-79", 2, 2)
    assert finding["first_seen"] <= coordinator.clock()


async def test_a_node_story_carries_its_lifecycle_history(coordinator: Coordinator) -> None:
    await take_out(coordinator, faulty("gpu-1", gpu=2))
    node = coordinator.node("gpu-1")
    assert node is not None
    (history,) = node["history"]
    assert history["event"] == "healthy -> pending-reboot"
    assert history["reason"].startswith("fault-needs-reboot: XID 79 on GPU 2 at ")


async def test_a_node_marks_say_what_the_cluster_shows(coordinator: Coordinator) -> None:
    await take_out(coordinator, faulty("gpu-1", gpu=2))
    assert await coordinator.marks("gpu-1") == {
        "actuator": "local", "exists": True, "ready": None,
        "label": "UnschedulablePendingReboot", "expected_label": "UnschedulablePendingReboot",
        "cordoned": True, "cordoned_by_gpuwarden": True,
    }  # fmt: skip
    assert await coordinator.marks("gpu-404") is None


async def test_the_cluster_gpu_buckets_add_up_to_the_total(coordinator: Coordinator) -> None:
    for name in ("gpu-1", "gpu-2", "gpu-3"):
        coordinator.on_state(FakeAgent(name).state())
    await take_out(coordinator, faulty("gpu-2", gpu=0))
    unschedulable = faulty("gpu-3", gpu=1, action=Action.RESET_GPU)
    await take_out(coordinator, unschedulable)
    capacity = coordinator.cluster()["capacity"]
    assert sum(capacity[b.key] for b in GPU_BUCKETS) == capacity[GPUS_TOTAL.key] > 0
    assert capacity["gpus_pending_recovery"] == 2 * capacity["gpus_total"] // 3


def test_the_cluster_answer_defines_each_number_it_gives(coordinator: Coordinator) -> None:
    cluster = coordinator.cluster()
    assert set(cluster["definitions"]) >= set(cluster["capacity"])


@pytest.mark.parametrize(
    "term", [GPUS_TOTAL, *GPU_BUCKETS, *TEAM_TERMS, UNASSIGNED], ids=lambda t: t.key
)
def test_the_operations_guide_quotes_each_definition(term: Term) -> None:
    words = " ".join(DOCS.read_text().split())
    assert f"| {term.label} | `{term.key}` | {term.definition} |" in words
