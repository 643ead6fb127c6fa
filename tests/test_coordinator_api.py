"""The coordinator's HTTP API and the ``gpuwarden`` command that reads it, against a running
coordinator (real Mosquitto, fake API server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator import cli
from coordinator.backends.kubernetes.contract import (
    CORDONED_BY_ANNOTATION,
    GPU_CONDITION,
    HEALTH_LABEL,
)
from tests.brokers import Mosquitto, free_port
from tests.coordinator_harness import (
    RunningCoordinator,
    add_nodes,
    coordinator_settings,
    eventually,
    fleet,
    running_coordinator,
    token_file,
)
from tests.fakekube import FakeKube, running_fake_kube

TOKEN = "s3cret-operator-token"
TAINT = {"key": "gpuwarden.io/unhealthy", "effect": "NoSchedule"}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with running_fake_kube() as server:
        yield server


def _condition(node: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (c for c in node["status"].get("conditions", []) if c["type"] == GPU_CONDITION), None
    )


def _recovered_events(kube: FakeKube, node: str) -> list[dict[str, Any]]:
    return [
        e for e in kube.events()
        if e["involvedObject"]["name"] == node and e["reason"] == "NodeRecovered"
    ]  # fmt: skip


async def _lifecycle_is(coordinator: RunningCoordinator, node: str, state: str) -> None:
    await eventually(
        lambda: coordinator.api.lifecycle(node),
        lambda seen: seen == state,
        what=f"{node} {state}",
    )


async def _marked_for_reboot(coordinator: RunningCoordinator, kube: FakeKube, node: str) -> None:
    await _lifecycle_is(coordinator, node, "pending-reboot")
    await eventually(
        lambda: asyncio.to_thread(kube.node, node),
        lambda n: _condition(n) is not None,
        what=f"{node} fully marked",
    )


@pytest.mark.broker
@pytest.mark.slow
async def test_an_operator_clear_with_the_token_undoes_exactly_the_marks(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    kube.modify_node(
        "gpu-1",
        lambda n: n["spec"].update(taints=[{"key": "team", "value": "x", "effect": "NoSchedule"}]),
    )
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube,
        flags=["--max-unhealthy", "1", "--api-token-file", str(token_file(tmp_path, TOKEN))],
    )  # fmt: skip
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")
        await agents.fault("gpu-1")
        await _marked_for_reboot(coordinator, kube, "gpu-1")
        await agents.repair("gpu-1")  # fixed in place: no new boot, so only a person can clear
        reply = await coordinator.api.post(
            "/api/v1/nodes/gpu-1/clear", {"reason": "reseated GPU 0", "actor": "alice"},
            token=TOKEN,
        )  # fmt: skip
        await _lifecycle_is(coordinator, "gpu-1", "healthy")
        await eventually(
            lambda: asyncio.to_thread(_recovered_events, kube, "gpu-1"),
            what="a NodeRecovered event for gpu-1",
        )
        audit = await coordinator.api.audit("gpu-1")

    assert reply.status == 200
    node = kube.node("gpu-1")
    assert not node["spec"].get("unschedulable")
    assert node["spec"]["taints"] == [{"key": "team", "value": "x", "effect": "NoSchedule"}]
    assert node["metadata"]["labels"][HEALTH_LABEL] == "Schedulable"
    assert CORDONED_BY_ANNOTATION not in node["metadata"].get("annotations", {})
    condition = _condition(node)
    assert condition is not None and condition["status"] == "True"
    operator = [e for e in audit if e["kind"] == "operator"]
    assert [(e["action"], e["actor"], e["reason"]) for e in operator] == [
        ("clear", "alice", "reseated GPU 0")
    ]


@pytest.mark.broker
@pytest.mark.slow
async def test_an_operator_clear_without_the_token_is_refused_with_401_and_changes_nothing(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube,
        flags=["--max-unhealthy", "1", "--api-token-file", str(token_file(tmp_path, TOKEN))],
    )  # fmt: skip
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")
        await agents.fault("gpu-1")
        await _marked_for_reboot(coordinator, kube, "gpu-1")
        await agents.repair("gpu-1")
        no_token = await coordinator.api.post("/api/v1/nodes/gpu-1/clear")
        wrong_token = await coordinator.api.post("/api/v1/nodes/gpu-1/clear", token="guess")
        await asyncio.sleep(1.5)  # past a decision round: a clear would have been applied
        lifecycle = await coordinator.api.lifecycle("gpu-1")
        audit = await coordinator.api.audit("gpu-1")

    assert (no_token.status, wrong_token.status) == (401, 401)
    assert "bearer token" in no_token.text
    assert lifecycle == "pending-reboot"
    assert kube.node("gpu-1")["metadata"]["labels"][HEALTH_LABEL] == "UnschedulablePendingReboot"
    assert not [e for e in audit if e["kind"] == "operator"]


@pytest.mark.broker
@pytest.mark.slow
async def test_operator_actions_are_forbidden_when_no_api_token_file_was_given(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1")
    settings = coordinator_settings(tmp_path, broker_url=mosquitto.url, kube=kube)
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1")
        await _lifecycle_is(coordinator, "gpu-1", "healthy")
        reply = await coordinator.api.post("/api/v1/nodes/gpu-1/clear", token=TOKEN)

    assert reply.status == 403
    assert "--api-token-file" in reply.text


async def _cli(*argv: str) -> int:
    # the command blocks on urllib, and the coordinator it asks shares this event loop
    return await asyncio.to_thread(cli.main, list(argv))


@pytest.mark.broker
@pytest.mark.slow
async def test_gpuwarden_status_prints_the_capacity_of_a_running_coordinator(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2", "gpu-3")
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube, flags=["--max-unhealthy", "1"]
    )
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2", "gpu-3")
        await agents.fault("gpu-2")
        await _marked_for_reboot(coordinator, kube, "gpu-2")
        capsys.readouterr()
        code = await _cli("status", "--api", coordinator.api.base_url)
        out = capsys.readouterr().out

    assert code == 0
    values = {cells[0]: cells[1] for cells in map(_cells, out.splitlines()) if len(cells) > 1}
    assert {k: values[k] for k in ("Nodes", "GPUs total", "GPUs healthy",
                                   "GPUs out for recovery", "Nodes pending-reboot")} == {
        "Nodes": "3", "GPUs total": "6", "GPUs healthy": "4", "GPUs out for recovery": "2",
        "Nodes pending-reboot": "1",
    }  # fmt: skip


@pytest.mark.broker
@pytest.mark.slow
async def test_gpuwarden_nodes_prints_one_row_per_node_with_its_lifecycle(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube, flags=["--max-unhealthy", "1"]
    )
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")
        await agents.fault("gpu-2")
        await _marked_for_reboot(coordinator, kube, "gpu-2")
        capsys.readouterr()
        code = await _cli("nodes", "--api", coordinator.api.base_url)
        out = capsys.readouterr().out

    assert code == 0
    rows = {cells[0]: cells for cells in map(_cells, out.splitlines()) if cells}
    assert rows["Node"][:5] == ["Node", "Lifecycle", "Reason", "Health", "GPUs ok"]
    assert rows["gpu-1"][:5] == ["gpu-1", "healthy", "-", "healthy", "2/2"]
    assert rows["gpu-2"][:2] == ["gpu-2", "pending-reboot"]
    assert rows["gpu-2"][2].startswith("XID 79 on GPU 0 at ")
    assert rows["gpu-2"][3:5] == ["unhealthy", "0/2"]


@pytest.mark.broker
@pytest.mark.slow
async def test_gpuwarden_nodes_name_tells_the_story_of_a_node_taken_out(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube, flags=["--max-unhealthy", "1"]
    )
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")
        await agents.fault("gpu-2", gpu=1)
        await _marked_for_reboot(coordinator, kube, "gpu-2")
        capsys.readouterr()
        code = await _cli("nodes", "gpu-2", "--api", coordinator.api.base_url)
        out = capsys.readouterr().out

    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    facts = {row[0]: row[1] for row in rows if len(row) == 2}
    assert facts["Reason"].startswith("XID 79 on GPU 1 at ")
    assert facts["Marks"] == (
        "label UnschedulablePendingReboot, cordoned by gpuwarden, Ready (kubernetes actuator)"
    )
    finding = next(row for row in rows if "XID-79" in row)
    assert finding[:4] == ["1", "XID-79", "critical", "reboot"]
    assert any(row[1:2] == ["healthy -> pending-reboot"] for row in rows)


def _cells(line: str) -> list[str]:
    """The cells of one row of piped output (tab-separated)."""
    return line.split("\t") if "\t" in line else []


@pytest.mark.parametrize("command", ["status", "nodes"])
def test_gpuwarden_exits_1_saying_how_to_point_it_at_the_coordinator_when_nothing_listens(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    code = cli.main([command, "--api", url])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert f"gpuwarden {command}: cannot reach the coordinator at {url}" in captured.err
    assert "--api" in captured.err
