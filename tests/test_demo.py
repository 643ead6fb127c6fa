"""`gpuwarden demo` as a newcomer runs it (without the live view): the scheduled faults are
detected, nodes are marked, tasks are governed, every reaction is told on one line, and it
stops cleanly; a taken port is one clear line and leaves nothing behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


@dataclass(frozen=True)
class DemoRun:
    nodes: dict[str, str]  # lifecycle by node, once gpu-node-014 went suspect
    teams: set[str]
    output: str
    returncode: int

    def told(self, prefix: str) -> list[str]:
        """The lines (without their time) that start with ``prefix``."""
        lines = [line.partition("] ")[2] for line in self.output.splitlines()]
        return [line for line in lines if line.startswith(prefix)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    state = tmp_path_factory.mktemp("demo") / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "demo", "--no-live", "--duration", "75",
         "--http", f"127.0.0.1:{port}", "--state", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        nodes: dict[str, str] = {}
        teams: list[dict[str, Any]] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
            try:
                nodes = {n["name"]: n["lifecycle"] for n in _get(f"{api}/api/v1/nodes")["nodes"]}
                teams = _get(f"{api}/api/v1/teams")["teams"]
            except OSError:
                continue
            if nodes.get("gpu-node-014") == "suspect":
                break
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return DemoRun(nodes, {t["name"] for t in teams}, output, proc.returncode)


def test_the_demo_marks_each_faulty_node_and_never_cordons_a_silent_one(
    demo_run: DemoRun,
) -> None:
    assert demo_run.nodes.get("gpu-node-009") == "pending-reboot"
    assert demo_run.nodes.get("gpu-node-010") == "unschedulable"
    assert demo_run.nodes.get("gpu-node-011") == "pending-replacement"
    assert demo_run.nodes.get("gpu-node-014") == "suspect"  # silent, but never cordoned for it
    assert len(demo_run.nodes) == 16
    assert demo_run.teams == {"research", "inference", "vision", "nlp"}


def test_the_demo_stops_cleanly_with_a_summary_of_governance(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.output
    summary = next(line for line in demo_run.output.splitlines()
                   if line.startswith("demo summary"))  # fmt: skip
    assert "0 requeued" not in summary and "0 admitted" not in summary


def test_no_live_tells_each_fault_and_each_reaction_on_one_line(demo_run: DemoRun) -> None:
    assert demo_run.told("XID 79 on gpu-node-009")
    (marked,) = demo_run.told("coordinator: gpu-node-009 -> pending-reboot")
    assert "XID 79 on GPU 2 at " in marked
    assert demo_run.told("coordinator: gpu-node-011 -> pending-replacement")
    assert demo_run.told("coordinator: gpu-node-014 -> suspect")
    kinds = {line.split()[3] for line in demo_run.told("governance [sim ")}
    assert {"requeue", "preempt"} <= kinds


def test_a_taken_http_port_is_one_clear_line_and_leaves_no_state_directory(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "demo", "--no-live",
             "--http", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""  # no "[1043.1s] stopping" from a demo that never started
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"gpuwarden demo: --http 127.0.0.1:{port}: cannot listen")
    assert "pick another port or --http off" in line
    assert list(tmp_path.iterdir()) == []
