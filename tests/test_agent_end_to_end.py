"""The real agent process, in sim mode, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.agent_process import agent_process
from tests.brokers import Mosquitto
from tests.mqtt_helpers import Received, listening

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _scenario(tmp: Path, text: str) -> str:
    path = tmp / "scenario.yaml"
    path.write_text(text)
    return str(path)


def _events(msgs: list[Received]) -> list[dict[str, object]]:
    return [m.json() for m in msgs if m.topic.endswith("/events")]


def _states(msgs: list[Received]) -> list[dict[str, object]]:
    return [m.json() for m in msgs if m.topic.endswith("/state")]


def _gpu(state: dict[str, object], index: int) -> dict[str, object]:
    gpus = state["gpus"]
    assert isinstance(gpus, list)
    return next(g for g in gpus if g["index"] == index)


async def test_xid_79_reaches_events_and_turns_the_gpu_unhealthy(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    scenario = _scenario(tmp_path, "- {at: 1.0, gpu: 3, fault: xid, xid: 79}\n")
    async with listening(mosquitto.port, "gpuwarden/v1/c1/nodes/#") as heard:
        with agent_process(mosquitto.url, "node-a", "--sim-scenario", scenario, tmp=tmp_path):
            msgs = await heard.wait_for(
                lambda m: any(_gpu(s, 3)["health"] == "unhealthy" for s in _states(m)),
                timeout=30,
            )
    xid = [e for e in _events(msgs) if e["code"] == "XID-79"]
    assert len(xid) == 1
    assert xid[0]["gpu_index"] == 3 and xid[0]["severity"] == "critical"
    state = next(s for s in _states(msgs) if _gpu(s, 3)["health"] == "unhealthy")
    assert _gpu(state, 3)["action"] in {"reboot", "replace"}
    assert state["health"] == "unhealthy" and state["action"] in {"reboot", "replace"}
    assert _gpu(state, 2)["health"] == "healthy"


async def test_a_gpu_lost_mid_run_is_reported_lost_and_the_others_still_read(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    scenario = _scenario(tmp_path, "- {at: 1.5, gpu: 5, fault: gpu_lost}\n")
    async with listening(mosquitto.port, "gpuwarden/v1/c1/nodes/#") as heard:
        with agent_process(mosquitto.url, "node-b", "--sim-scenario", scenario, tmp=tmp_path):
            msgs = await heard.wait_for(
                lambda m: any(_gpu(s, 5)["lost"] for s in _states(m)), timeout=30
            )
    assert any(e["kind"] == "gpu_lost" and e["gpu_index"] == 5 for e in _events(msgs))
    state = next(s for s in _states(msgs) if _gpu(s, 5)["lost"])
    assert _gpu(state, 5)["health"] == "unhealthy"
    assert _gpu(state, 4)["utilization_gpu_pct"] is not None


async def test_an_agent_that_dies_is_announced_offline_by_its_last_will(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with listening(mosquitto.port, "gpuwarden/v1/c1/nodes/+/status") as heard:
        with agent_process(mosquitto.url, "node-c", tmp=tmp_path) as proc:
            await heard.wait_for(lambda m: any(x.json()["status"] == "online" for x in m))
            proc.send_signal(signal.SIGKILL)  # no goodbye: only the will can speak
            msgs = await heard.wait_for(
                lambda m: any(x.json()["status"] == "offline" for x in m), timeout=60
            )
    online = next(x.json() for x in msgs if x.json()["status"] == "online")
    offline = next(x.json() for x in msgs if x.json()["status"] == "offline")
    assert offline["seq"] > online["seq"]  # the coordinator must not take it as stale


async def test_a_stopped_agent_says_offline_itself(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with listening(mosquitto.port, "gpuwarden/v1/c1/nodes/+/status") as heard:
        with agent_process(mosquitto.url, "node-d", tmp=tmp_path) as proc:
            await heard.wait_for(lambda m: any(x.json()["status"] == "online" for x in m))
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 15)
            assert proc.returncode == 0
        msgs = await heard.wait_for(lambda m: any(x.json()["status"] == "offline" for x in m))
    assert msgs[-1].json()["status"] == "offline"


async def test_an_agent_stopping_with_unacknowledged_events_still_says_offline(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # no coordinator: nobody acknowledges the fault, and the agent must not wait for ever
    scenario = _scenario(tmp_path, "- {at: 0.5, gpu: 1, fault: xid, xid: 79}\n")
    async with listening(mosquitto.port, "gpuwarden/v1/c1/nodes/#") as heard:
        with agent_process(mosquitto.url, "node-e", "--sim-scenario", scenario,
                           tmp=tmp_path) as proc:  # fmt: skip
            await heard.wait_for(_events, timeout=30)
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 15)
            assert proc.returncode == 0
        msgs = await heard.wait_for(lambda m: any(_offline(x) for x in m))
    assert msgs


def _offline(msg: Received) -> bool:
    return msg.topic.endswith("/status") and msg.json()["status"] == "offline"


async def test_faults_raised_while_the_broker_is_dead_all_arrive_after_it_returns(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(workdir=tmp_path / "broker", persistence=True).start()
    scenario = _scenario(
        tmp_path,
        "\n".join(f"- {{at: {3 + 0.3 * i:.1f}, gpu: {i}, fault: xid, xid: 13}}" for i in range(6))
        + "\n",
    )
    try:
        async with listening(
            broker.port, "gpuwarden/v1/c1/nodes/+/events", identifier="audit", persistent=True
        ) as heard:
            with agent_process(
                broker.url,
                "node-e",
                "--sim-scenario",
                scenario,
                "--spool",
                str(tmp_path / "spool"),
                tmp=tmp_path,
            ):
                await asyncio.sleep(2.0)
                broker.kill()  # faults 0-5 happen at 3.0-4.5 s, with no broker
                await asyncio.sleep(4.0)
                broker.start()
                msgs = await heard.wait_for(
                    lambda m: len([x for x in m if x.json()["code"] == "XID-13"]) >= 6,
                    timeout=40,
                )
                await asyncio.sleep(1.0)  # a duplicate would arrive now
                msgs = list(heard.messages)
        xids = [x.json() for x in msgs if x.json()["code"] == "XID-13"]
        assert sorted(x["gpu_index"] for x in xids) == [0, 1, 2, 3, 4, 5]
        assert [x["gpu_index"] for x in xids] == [0, 1, 2, 3, 4, 5]  # in order
    finally:
        broker.stop()
