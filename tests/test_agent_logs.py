"""The agent's log as an operator reads it from journald or ``kubectl logs``: JSON lines that
each name the node, at levels that mean what they say."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SCENARIO = """
- {at: 0.5, gpu: 0, fault: nvlink_down}
- {at: 2.0, gpu: 0, fault: clear}
"""


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def agent_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """A simulated agent whose GPU 0 loses an NVLink and gets it back, with no broker (so the
    publisher logs too), stopped with SIGTERM: everything it logged."""
    tmp = tmp_path_factory.mktemp("agent-logs")
    (tmp / "scenario.yaml").write_text(SCENARIO)
    stderr = tmp / "stderr.log"
    with stderr.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--gpu-backend", "sim", "--node", "gpu-node-7",
             "--sim-scenario", str(tmp / "scenario.yaml"), "--broker", "mqtt://127.0.0.1:1",
             "--http", "off", "--kmsg", "off", "--interval", "0.5"],
            stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                line.get("message") == "GPU 0 unhealthy -> healthy" for line in _lines(stderr)
            ):
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    yield _lines(stderr)


def _one(log: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    found = [line for line in log if all(line.get(k) == v for k, v in fields.items())]
    assert found, f"no line with {fields} in {log}"
    return found[0]


def test_every_agent_log_line_names_its_node(agent_log: list[dict[str, Any]]) -> None:
    events = {line["event"] for line in agent_log}
    # NVML start-up, the scenario's thread and the sample loop all logged
    assert {"nvml_started", "scenario_step", "GPU health changed", "node health"} <= events
    assert [line["event"] for line in agent_log if line.get("node") != "gpu-node-7"] == []


def test_a_gpu_back_to_health_is_logged_as_info(agent_log: list[dict[str, Any]]) -> None:
    assert _one(agent_log, message="GPU 0 unhealthy -> healthy")["level"] == "info"
    back = [line for line in agent_log if line["event"] == "node health"][-1]
    assert (back["health"], back["level"]) == ("healthy", "info")


def test_a_gpu_fault_is_logged_as_an_error(agent_log: list[dict[str, Any]]) -> None:
    assert _one(agent_log, message="GPU 0 healthy -> unhealthy")["level"] == "error"
    assert _one(agent_log, event="node health", health="unhealthy")["level"] == "error"
