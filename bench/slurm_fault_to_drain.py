"""From a fault event on the broker to the node drained in Slurm, on a real 4-node cluster.

    python bench/slurm_fault_to_drain.py [--faults 50]

Starts a private Mosquitto, a real Slurm (one slurmctld and four slurmd with 8 fake GPUs
each, ``tests/slurm_cluster.py``; as root, with Debian's slurmctld, slurmd, slurm-client and
munge) and the real coordinator process (``python -m coordinator --backend slurm``: the
Slurm actuator, the audit log on disk). This process plays the four agents (a healthy state
every 0.25 s each) and, once the coordinator's cluster feed counts all four, publishes a
critical XID 79 event for one random node at a time, and times it from the publish to the
first ``sinfo --json`` that shows the node DRAIN with gpuwarden's reason (``sinfo`` polled
back to back, about every 15 ms: the figure includes up to one poll). The node then "reboots"
(a new boot, healthy): the coordinator sees it recover (``--recovery-stable 0.5``) and
resumes it, and the next fault follows. Both clocks are this process's ``time.monotonic``.

The coordinator runs with ``--max-unhealthy 100%`` and ``--max-remediations-per-minute
100000``, so the safety gate never holds a fault back: the figure is the decision path.
Target: p99 under 1 s. Exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import percentile, progress, scratch_broker, summary
from tests.coordinator_harness import CLUSTER, Fleet, fleet, retained
from tests.slurm_cluster import NODES, SlurmCluster, missing_binaries, running_slurm

TARGET_P99_MS = 1000.0
DRAIN_TIMEOUT_S = 15.0
RESUME_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0


@contextmanager
def coordinator_process(tmp: Path, broker_url: str, slurm: SlurmCluster) -> Iterator[None]:
    argv = [
        sys.executable, "-m", "coordinator", "--backend", "slurm",
        "--slurm-conf", str(slurm.conf), "--broker", broker_url, "--cluster", CLUSTER,
        "--state", str(tmp / "state"), "--http", "off", "--offline-grace", "5",
        "--recovery-stable", "0.5", "--max-unhealthy", "100%",
        "--max-remediations-per-minute", "100000", "--identity", "bench-coordinator",
        "--log-level", "warning",
    ]  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    with (tmp / "coordinator.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        try:
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def node_state(slurm: SlurmCluster, name: str) -> tuple[bool, str]:
    """(drained, reason) of ``name`` as ``sinfo --json`` shows it."""
    nodes = json.loads(slurm.run("sinfo", "--json").stdout)["nodes"]
    node = next(n for n in nodes if n["name"] == name)
    return "DRAIN" in node["state_flags"], str(node["reason"])


async def until(slurm: SlurmCluster, name: str, drained: bool, within: float) -> float | None:
    """Poll sinfo back to back until ``name`` is (not) drained by gpuwarden; the moment it
    first shows so, or None after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        now_drained, reason = await asyncio.to_thread(node_state, slurm, name)
        seen = time.monotonic()
        if now_drained == drained and (not drained or reason.startswith("gpuwarden: XID 79")):
            return seen
    return None


async def wait_ready(port: int, tmp: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    topic = f"gpuwarden/v1/{CLUSTER}/cluster/health"
    while True:
        health = await retained(port, topic)
        if health is not None and health["nodes_total"] == len(NODES):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the coordinator never counted {len(NODES)} nodes; see "
                               f"{tmp / 'coordinator.log'}")  # fmt: skip
        await asyncio.sleep(0.2)


async def inject(agents: Fleet, slurm: SlurmCluster, faults: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    latencies: list[float] = []
    report = progress(faults, lambda done: f"  {done}/{faults} faults", parts=5)
    for n in range(1, faults + 1):
        name = rng.choice(NODES)
        published = time.monotonic()
        await agents.fault(name, xid=79, gpu=rng.randrange(8))
        drained = await until(slurm, name, True, DRAIN_TIMEOUT_S)
        if drained is None:
            print(f"  {name}: not drained within {DRAIN_TIMEOUT_S:g}s", flush=True)
        else:
            latencies.append((drained - published) * 1000)
        await agents.reboot(name)  # back healthy on a new boot: recovered, then resumed
        if await until(slurm, name, False, RESUME_TIMEOUT_S) is None:
            raise RuntimeError(f"{name} was not resumed within {RESUME_TIMEOUT_S:g}s")
        report(n)
    return latencies


async def run(faults: int, seed: int) -> list[float]:
    with scratch_broker() as (tmp, broker), running_slurm(tmp / "slurm") as slurm:
        print(f"broker on port {broker.port}, Slurm with {len(NODES)} nodes x 8 GPUs; "
              "coordinator --backend slurm --max-unhealthy 100% "
              "--max-remediations-per-minute 100000", flush=True)  # fmt: skip
        with coordinator_process(tmp, broker.url, slurm):
            async with fleet(broker.port) as agents:
                await agents.join(*NODES)
                await wait_ready(broker.port, tmp)
                return await inject(agents, slurm, faults, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--faults", type=int, default=50)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    missing = missing_binaries()
    if missing:
        sys.exit(f"Slurm is missing ({', '.join(missing)}): apt-get install -y slurmctld "
                 "slurmd slurm-client munge (as root)")  # fmt: skip
    latencies = asyncio.run(run(args.faults, args.seed))
    missed = args.faults - len(latencies)
    print(f"  publish -> drain in sinfo: {summary(latencies)}", flush=True)
    if not latencies:
        print("result: no node was drained: FAIL", flush=True)
        sys.exit(1)
    p99 = percentile(latencies, 99)
    ok = p99 < TARGET_P99_MS and missed == 0
    print(
        f"result: fault -> drain p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms "
        f"over {len(latencies)} faults, {missed} never drained (target p99 < "
        f"{TARGET_P99_MS:g} ms, all drained): {'PASS' if ok else 'FAIL'}",
        flush=True,
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
