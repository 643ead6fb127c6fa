"""Re-capture the Slurm JSON the unit tests parse, from real daemons (22.05 here):
``PYTHONPATH=. .venv/bin/python tests/data/slurm/capture.py``. Writes beside this file."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

from tests.slurm_cluster import running_slurm

HERE = Path(__file__).parent
FACT = "[fact:3f2a9c1b7d6e5a40@1796228541.250]"


def save(name: str, text: str) -> None:
    (HERE / name).write_text(json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, running_slurm(
        Path(tmp), extra_config=["SlurmdTimeout=6", "MessageTimeout=2"]
    ) as c:
        save("sinfo-idle.json", c.run("sinfo", "--json").stdout)
        running = c.submit("while true; do sleep 1; done\n", "--gres=gpu:2", "-w", "node2")
        fixed = c.submit("sleep 1000\n", "--no-requeue", "--gres=gpu:1", "-w", "node2")
        while any(j["job_state"] != "RUNNING" for j in c.jobs()):
            time.sleep(0.1)
        save("squeue-running.json", c.run("squeue", "--json").stdout)
        c.drain("node2", f"gpuwarden: XID 79 on GPU 2 (pending-reboot) {FACT}")
        c.drain("node3", "admin: fan replaced, burn-in pending")
        c.run("scontrol", "reboot", "ASAP", "nextstate=DOWN",
              f"reason=gpuwarden: XID 48 on GPU 0 (pending-reboot) {FACT}", "node4")
        # node1's slurmd dies: NOT_RESPONDING after a ping, then DOWN after SlurmdTimeout
        pid = int((Path(tmp) / "slurmd-node1.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        c.run("scontrol", "requeue", str(running))
        time.sleep(0.05)
        save("squeue-requeued.json", c.run("squeue", "--json").stdout)
        c.run("scancel", str(fixed))
        deadline = time.monotonic() + 40
        while "DOWN" not in c.run("sinfo", "-h", "-n", "node1", "-o", "%T").stdout.upper():
            assert time.monotonic() < deadline, "node1 never went down"
            time.sleep(0.5)
        save("sinfo-drained.json", c.run("sinfo", "--json").stdout)
        c.stop_controller()
        save("sinfo-controller-down.json", c.run("sinfo", "--json", timeout=60).stdout)


if __name__ == "__main__":
    main()
