"""What the agent costs a GPU node in steady state: CPU share and resident memory.

    python bench/agent_overhead.py [--seconds 75] [--gpus 8] [--procs-per-gpu 4]
                                   [--attribution on|off]

Starts a private Mosquitto and the real agent process (``python -m agent``) in sim mode with
8 GPUs, the default 10 s interval, its HTTP endpoint on, and a disk spool, as the shipped
images run it. Attribution is on: each simulated pod runs ``--procs-per-gpu`` worker
processes per GPU, and the agent reads their cgroup files from a /proc tree this script
writes (``--proc-root``), as it reads the host's /proc on a node; ``--attribution off``
runs the same with ``--proc-root off``, for comparison.

While it runs, this script plays the node's other visitors: a Prometheus scrape of
``/metrics`` every 15 s and a liveness probe of ``/healthz`` every 10 s. After a
warm-up (startup, imports and the first snapshots are not steady state) it samples the
process's CPU time and RSS with psutil every 5 s.

CPU share is CPU seconds (user + system, all threads) over wall seconds, as a percentage of
one core. Targets: under 1% of one core and under 60 MiB RSS. Exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench._common import scratch_broker, sim_proc_tree
from tests.agent_process import agent_process
from tests.brokers import free_port

TARGET_CPU_PCT = 1.0
TARGET_RSS_MIB = 60.0
MIB = 1024 * 1024
SAMPLE_EVERY_S = 5.0
SCRAPE_EVERY_S = 15.0
PROBE_EVERY_S = 10.0
WARMUP_S = 15.0
NODE = "bench-node"  # also the simulated node's seed: its pods' uids and pids


@dataclass(frozen=True)
class Reading:
    wall: float
    cpu_s: float
    rss: int


def read(proc: psutil.Process) -> Reading:
    times = proc.cpu_times()
    return Reading(time.monotonic(), times.user + times.system, proc.memory_info().rss)


def fetch(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return len(response.read())


def wait_healthy(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            fetch(url)
            return
        time.sleep(0.2)
    raise RuntimeError(f"the agent did not answer {url} within {timeout_s:g}s")


def observe(proc: psutil.Process, base: str, seconds: float) -> tuple[list[Reading], int]:
    """Readings every SAMPLE_EVERY_S while playing Prometheus and the kubelet; and the size
    of the last /metrics page."""
    readings = [read(proc)]
    started = readings[0].wall
    next_scrape = started
    next_probe = started
    next_sample = started + SAMPLE_EVERY_S
    page = 0
    while True:
        now = time.monotonic()
        if now >= next_scrape:
            page = fetch(f"{base}/metrics")
            next_scrape += SCRAPE_EVERY_S
        if now >= next_probe:
            fetch(f"{base}/healthz")
            next_probe += PROBE_EVERY_S
        if now >= next_sample:
            readings.append(read(proc))
            next_sample += SAMPLE_EVERY_S
            elapsed = readings[-1].wall - started
            window = readings[-1].cpu_s - readings[-2].cpu_s
            print(
                f"  {elapsed:5.0f}s  CPU {window / SAMPLE_EVERY_S * 100:5.2f}% of a core "
                f"over the last {SAMPLE_EVERY_S:g}s, RSS {readings[-1].rss / MIB:.1f} MiB",
                flush=True,
            )
            if elapsed >= seconds:
                return readings, page
        time.sleep(max(0.0, min(next_scrape, next_probe, next_sample) - time.monotonic()))


def measure(args: argparse.Namespace, http_port: int) -> tuple[list[Reading], int, int]:
    """Readings over the steady state, the last /metrics page size, and USS at the end."""
    base = f"http://127.0.0.1:{http_port}"
    with scratch_broker() as (tmp, broker):
        # later flags win over agent_process's test defaults (1 s interval, HTTP off)
        agent_flags = [
            "--interval", "10", "--http", f"127.0.0.1:{http_port}",
            "--spool", str(tmp / "spool"), "--sim-gpus", str(args.gpus),
            "--sim-processes-per-gpu", str(args.procs_per_gpu),
        ]  # fmt: skip
        attribution = "off"
        if args.attribution == "on":
            pids = sim_proc_tree(tmp / "proc", args.gpus, NODE, args.procs_per_gpu)
            agent_flags += ["--proc-root", str(tmp / "proc")]
            attribution = f"on, {len(pids)} GPU processes' cgroups read from {tmp / 'proc'}"
        else:
            agent_flags += ["--proc-root", "off"]
        with agent_process(broker.url, NODE, *agent_flags, tmp=tmp) as child:
            proc = psutil.Process(child.pid)
            wait_healthy(f"{base}/healthz")
            print(
                f"agent pid {child.pid}: {args.gpus} simulated GPUs, 10 s interval, HTTP on, "
                f"attribution {attribution}; warming up {WARMUP_S:g}s, then {args.seconds:g}s "
                "measured",
                flush=True,
            )
            time.sleep(WARMUP_S)
            readings, page = observe(proc, base, args.seconds)
            uss: int = proc.memory_full_info().uss
            if child.poll() is not None:
                raise RuntimeError(f"the agent exited early (code {child.returncode})")
    return readings, page, uss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=75.0)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument(
        "--procs-per-gpu", type=int, default=4, help="worker processes per GPU of each pod"
    )
    parser.add_argument("--attribution", choices=["on", "off"], default="on")
    args = parser.parse_args()
    readings, page, uss = measure(args, free_port())
    first, last = readings[0], readings[-1]
    cpu_pct = (last.cpu_s - first.cpu_s) / (last.wall - first.wall) * 100
    rss_max = max(r.rss for r in readings) / MIB
    rss_median = statistics.median(r.rss for r in readings) / MIB
    print(
        f"  over {last.wall - first.wall:.0f}s: {last.cpu_s - first.cpu_s:.3f} CPU-seconds; "
        f"RSS median {rss_median:.1f} MiB, max {rss_max:.1f} MiB; USS at the end "
        f"{uss / MIB:.1f} MiB; /metrics page {page:,} bytes",
        flush=True,
    )
    ok = cpu_pct < TARGET_CPU_PCT and rss_max < TARGET_RSS_MIB
    print(
        f"result: CPU {cpu_pct:.2f}% of one core (target < {TARGET_CPU_PCT:g}%), RSS max "
        f"{rss_max:.1f} MiB (target < {TARGET_RSS_MIB:g} MiB): {'PASS' if ok else 'FAIL'}",
        flush=True,
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
