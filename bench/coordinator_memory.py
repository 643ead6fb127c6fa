"""The coordinator's memory with 10,000 nodes of 8 GPUs in its model.

    python bench/coordinator_memory.py [--nodes 10000] [--rounds 3]

Builds the real ``Coordinator`` (ingest gate, capacity model, remediator, metrics, audit log
on disk, local actuator; the ``kubernetes`` client is imported too, as a coordinator on
Kubernetes has it loaded) and feeds it a fleet through ``Ingestor.handle``: the path a
message from the broker takes after the socket (gate, then model). Every node says
``online``, then sends ``--rounds`` full state reports (8 GPUs with distinct UUIDs and serials,
1-4 processes each, ECC, remap, PCIe, NVLink and host figures; one node in 20 degraded with
a finding), and one node in 100 a fault event. Payloads are made one at a time, so none
is held but by the coordinator itself.

Two phases:

1. resident memory (psutil RSS, and the kernel's peak): after imports, with the fleet
   loaded, and after answering ``GET /api/v1/nodes`` and ``/api/v1/cluster`` once (the
   biggest transient the API makes);
2. a fresh coordinator fed the same fleet under ``tracemalloc``: what the fleet keeps
   allocated, the peak, and which files hold it (tracemalloc's own bookkeeping would
   inflate RSS, hence the separate phase).

Target: RSS under 300 MiB. Exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

import coordinator.backends.kubernetes.actuator  # noqa: F401 - loaded in production on Kubernetes; its RSS counts
from bench._common import (
    CLUSTER,
    EVENT_EVERY,
    GPUS_PER_NODE,
    fleet_messages,
    progress,
    quiet_product_logs,
)
from coordinator.audit import AuditLog
from coordinator.backends.local.actuator import LocalActuator
from coordinator.daemon import Coordinator
from coordinator.settings import parse_settings

TARGET_RSS_MIB = 300.0
MIB = 1024 * 1024


# --- the measurement -----------------------------------------------------------------------


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(state_dir: Path) -> Coordinator:
    settings = parse_settings(
        ["--cluster", CLUSTER, "--state", str(state_dir), "--http", "off"], {}
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    return Coordinator(
        settings,
        actuator=LocalActuator(state_dir / "marks.json"),
        audit=AuditLog(state_dir / "audit.sqlite3"),
    )


def feed(coordinator: Coordinator, nodes: int, rounds: int, label: str) -> int:
    total = nodes * (rounds + 1) + nodes // EVENT_EVERY
    report = progress(total, lambda done: f"  {label}: {done:,}/{total:,} messages")
    count = 0
    for topic, payload in fleet_messages(nodes, rounds):
        coordinator.ingestor.handle(topic, payload)
        count += 1
        report(count)
    stats = coordinator.ingestor.stats()
    if stats.rejected or stats.internal_errors:
        raise RuntimeError(
            f"{stats.rejected} messages rejected, {stats.internal_errors} internal errors"
        )
    return count


def answer_api(coordinator: Coordinator) -> int:
    """The bodies of GET /api/v1/nodes and /api/v1/cluster, built as the handlers build them."""
    nodes = json.dumps({"nodes": coordinator.nodes()}).encode()
    cluster = json.dumps(coordinator.cluster()).encode()
    return len(nodes) + len(cluster)


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="gpuwarden-bench-") as tmp:
        gc.collect()
        print(
            f"{args.nodes:,} nodes x {GPUS_PER_NODE} GPUs, {args.rounds} state rounds; "
            f"RSS after imports {rss_mib():.1f} MiB",
            flush=True,
        )
        print("1. resident memory", flush=True)
        first = build(Path(tmp) / "rss")
        base = rss_mib()
        started = time.perf_counter()
        count = feed(first, args.nodes, args.rounds, "feeding")
        elapsed = time.perf_counter() - started
        gc.collect()
        loaded = rss_mib()
        cap = first.model.capacity().cluster
        print(
            f"  {count:,} messages in {elapsed:.1f}s; model: {len(first.model):,} nodes, "
            f"{cap.total:,} GPUs ({cap.healthy:,} healthy)",
            flush=True,
        )
        body = answer_api(first)
        after_api = rss_mib()
        peak = peak_rss_mib()
        print(
            f"  RSS: coordinator built {base:.1f} MiB, fleet loaded {loaded:.1f} MiB "
            f"(+{loaded - base:.1f}), after the API listing ({body / MIB:.1f} MiB of JSON) "
            f"{after_api:.1f} MiB; peak {peak:.1f} MiB",
            flush=True,
        )
        first.audit_log.close()
        del first
        gc.collect()

        print("2. tracemalloc, a fresh coordinator", flush=True)
        second = build(Path(tmp) / "trace")
        tracemalloc.start()
        feed(second, args.nodes, args.rounds, "feeding under tracemalloc")
        gc.collect()
        kept, feed_peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        answer_api(second)
        _, api_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"  kept after feeding {kept / MIB:.1f} MiB ({kept / args.nodes / 1024:.1f} KiB a "
            f"node), peak while feeding {feed_peak / MIB:.1f} MiB, peak while answering the "
            f"API {api_peak / MIB:.1f} MiB",
            flush=True,
        )
        for stat in snapshot.statistics("filename")[:5]:
            frame = stat.traceback[0]
            where = Path(frame.filename)
            short = "/".join(where.parts[-2:])
            print(f"    {stat.size / MIB:7.1f} MiB in {stat.count:>9,} blocks  {short}")
        second.audit_log.close()

    worst = max(loaded, after_api, peak)
    ok = worst < TARGET_RSS_MIB
    print(
        f"result: RSS {loaded:.1f} MiB with the fleet loaded, {worst:.1f} MiB at worst "
        f"(target < {TARGET_RSS_MIB:g} MiB): {'PASS' if ok else 'FAIL'}",
        flush=True,
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    # the coordinator logs every fault event (JSON, as in production); keep it off the report
    quiet_product_logs()
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
