"""`gpuwarden demo` as a newcomer runs it (without the live view): the scheduled faults are
detected, nodes are marked, tasks are governed, and it stops cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def test_the_demo_shows_detection_marking_governance_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "demo", "--no-live", "--duration", "75",
         "--http", f"127.0.0.1:{port}", "--state", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        nodes: dict[str, str] = {}
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
        assert nodes.get("gpu-node-009") == "pending-reboot"
        assert nodes.get("gpu-node-010") == "unschedulable"
        assert nodes.get("gpu-node-011") == "pending-replacement"
        assert nodes.get("gpu-node-014") == "suspect"  # silent, but never cordoned for it
        assert len(nodes) == 16
        assert {t["name"] for t in teams} == {"research", "inference", "vision", "nlp"}
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, output
    assert "XID 79 on gpu-node-009" in output
    summary = next(line for line in output.splitlines() if line.startswith("demo summary"))
    assert "0 requeued" not in summary and "0 admitted" not in summary
