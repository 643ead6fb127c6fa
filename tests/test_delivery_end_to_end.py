"""Fault events are delivered end to end: real agents (with --spool), a real Mosquitto killed
with SIGKILL and restarted without persistence, and the coordinator restarted meanwhile.
Every fault an agent raised reaches the coordinator: the agents keep each event until the
coordinator, not the broker, acknowledges it."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from tests.agent_process import agent_process
from tests.brokers import Mosquitto
from tests.coordinator_harness import (
    Api,
    coordinator_settings,
    eventually,
    running_coordinator,
)
from tests.mqtt_helpers import listening

pytestmark = [pytest.mark.broker, pytest.mark.slow]

NODES = ("node-1", "node-2", "node-3")
# faults land while the broker is down (it dies at ~1 s and is back at ~8 s)
SCENARIO = """\
- {at: 3.0, gpu: 0, fault: xid, xid: 79}
- {at: 4.0, gpu: 1, fault: ecc_dbe}
- {at: 5.0, gpu: 2, fault: xid, xid: 48}
- {at: 6.0, gpu: 3, fault: thermal}
"""


def _faults_raised(log: Path) -> int:
    """How many events an agent raised, faults and GPU health changes alike (one log line
    each, carrying the event's id), from its JSON log."""
    entries = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return sum(1 for entry in entries if "event_id" in entry)


def _spooled(spool: Path) -> int:
    return len(list(spool.glob("*.event")))


async def test_no_fault_event_is_lost_across_a_broker_kill_and_a_coordinator_restart(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(workdir=tmp_path / "broker").start()  # no persistence
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    state = tmp_path / "state"

    def settings() -> CoordinatorSettings:
        return coordinator_settings(tmp_path, broker_url=broker.url, kube=None, state_dir=state)

    try:
        with ExitStack() as agents:
            async with running_coordinator(settings()) as first:
                for node in NODES:
                    agents.enter_context(agent_process(
                        broker.url, node, "--spool", str(tmp_path / f"spool-{node}"),
                        "--sim-scenario", str(scenario), "--event-ack-timeout", "1",
                        tmp=tmp_path,
                    ))  # fmt: skip
                await _until_nodes(first.api, len(NODES))
            broker.kill()  # the coordinator stopped; now the broker dies too
            await asyncio.sleep(7.0)
            broker.start()
            async with listening(broker.port, "gpuwarden/v1/c1/nodes/+/status") as back:
                await back.wait_for(
                    lambda m: {x.json()["node"] for x in m if x.json()["status"] == "online"}
                    >= set(NODES),
                    timeout=60,
                )
            await asyncio.sleep(1.0)  # the agents are back and have sent what they hold
            async with running_coordinator(settings()) as second:
                await eventually(
                    lambda: asyncio.to_thread(
                        lambda: sum(_spooled(tmp_path / f"spool-{n}") for n in NODES)
                    ),
                    lambda left: left == 0,
                    within=30,
                    what="every spooled event acknowledged",
                )
                accepted = await second.api.metric(
                    "gpuwarden_ingest_messages_total", {"kind": "events", "outcome": "accepted"}
                )
        raised = {node: _faults_raised(tmp_path / f"agent-{node}.log") for node in NODES}
    finally:
        broker.stop()

    total = sum(raised.values())
    # every agent raised its faults (an XID 79 among them) while the broker was down
    assert all(count >= 4 for count in raised.values()), raised
    assert accepted == total, f"the coordinator took {accepted:g} of {total} events"


async def _until_nodes(api: Api, count: int) -> None:
    async def nodes() -> int:
        return len((await api.get("/api/v1/nodes"))["nodes"])

    await eventually(nodes, lambda n: n == count, what=f"{count} nodes heard")
