"""What the coordinator refuses at start, as the operator sees it: exit 2 and one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.brokers import free_port
from tests.coordinator_harness import write_kubeconfig
from tests.fakekube import FakeKube


def test_a_missing_lease_namespace_stops_the_coordinator_saying_what_to_create(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    fake_kube.remove_namespace("gpuwarden-missing")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake_kube.url)
    result = subprocess.run(
        [
            sys.executable, "-m", "coordinator",
            "--broker", f"mqtt://127.0.0.1:{free_port()}",
            "--kube", f"kubeconfig:{kubeconfig}",
            "--lease-namespace", "gpuwarden-missing",
            "--state", str(tmp_path / "state"),
            "--http", "off",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "kubectl create namespace gpuwarden-missing" in last
    assert "--lease-namespace" in last
