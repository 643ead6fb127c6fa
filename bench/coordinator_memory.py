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
import contextlib
import gc
import hashlib
import json
import os
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

import coordinator.kube  # noqa: F401 - loaded in production on Kubernetes; its RSS counts
from coordinator.audit import AuditLog
from coordinator.daemon import Coordinator
from coordinator.local_actuator import LocalActuator
from coordinator.settings import parse_settings
from gpuwarden_common import logs
from gpuwarden_common.health import Action, Finding, Health, Severity
from gpuwarden_common.wire import (
    EccCounts,
    EventKind,
    EventMessage,
    GpuProcess,
    GpuState,
    HostState,
    Kind,
    NvLink,
    Pcie,
    RowRemap,
    StateMessage,
    StatusMessage,
    encode,
    node_topic,
)

CLUSTER = "bench"
GPUS_PER_NODE = 8
TARGET_RSS_MIB = 300.0
MIB = 1024 * 1024
INSTANCE_TYPES = ("p5.48xlarge", "p4d.24xlarge", "p5e.48xlarge")
DEGRADED_EVERY = 20
EVENT_EVERY = 100


# --- a realistic fleet (also used by coordinator_fault_to_cordon) ---------------------------


def node_name(index: int) -> str:
    return f"gpu-node-{index:05d}"


def boot_id_of(index: int) -> str:
    return hashlib.sha256(f"boot:{index}".encode()).hexdigest()[:32]


def _gpu_uuid(node: int, gpu: int) -> str:
    h = hashlib.sha256(f"gpu:{node}:{gpu}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def fleet_state(index: int, seq: int, rng: random.Random, *, degraded: bool) -> StateMessage:
    """One node's state report as an 8-GPU training node sends it."""
    node = node_name(index)
    sick = rng.randrange(GPUS_PER_NODE) if degraded else -1
    gpus = []
    for i in range(GPUS_PER_NODE):
        util = rng.uniform(70, 100)
        processes = [
            GpuProcess(pid=rng.randrange(1000, 4_000_000),
                       used_memory_bytes=rng.randrange(2, 20) * 1024**3,
                       name="/usr/bin/python3")
            for _ in range(rng.randint(1, 4))
        ]  # fmt: skip
        gpus.append(
            GpuState(
                index=i, uuid=_gpu_uuid(index, i), name="NVIDIA H100 80GB HBM3",
                serial=f"1652{index:06d}{i:03d}", pci_bus_id=f"00000000:{0x18 + i * 0x10:02X}:00.0",
                health=Health.DEGRADED if i == sick else Health.HEALTHY, action=Action.NONE,
                utilization_gpu_pct=round(util, 1), utilization_memory_pct=round(util * 0.6, 1),
                memory_used_bytes=sum(p.used_memory_bytes or 0 for p in processes),
                memory_total_bytes=85_520_809_984, temperature_c=float(rng.randint(45, 75)),
                power_draw_w=round(rng.uniform(300, 700), 1), power_limit_w=700.0,
                clock_sm_mhz=1980, clock_mem_mhz=2619,
                clock_event_reasons=["sw_power_cap"] if util > 95 else [],
                ecc_enabled=True,
                ecc=EccCounts(volatile_corrected=rng.randint(0, 3), volatile_uncorrected=0,
                              aggregate_corrected=rng.randint(0, 40), aggregate_uncorrected=0),
                row_remap=RowRemap(correctable=rng.randint(0, 2)),
                pcie=Pcie(gen=5, max_gen=5, width=16, max_width=16, replay_count=0),
                nvlink=NvLink(links_total=18, links_up=18),
                processes=processes,
            )
        )  # fmt: skip
    findings = (
        [Finding(check="ecc", severity=Severity.WARNING, code="ECC-SBE-RATE",
                 message=f"GPU {sick}: corrected ECC errors rising", gpu_index=sick)]
        if degraded else []
    )  # fmt: skip
    return StateMessage(
        cluster=CLUSTER, node=node, seq=seq, boot_id=boot_id_of(index), ts=time.time(),
        interval_s=10, instance_type=INSTANCE_TYPES[index % len(INSTANCE_TYPES)],
        driver_version="550.90.07", gpus_expected=GPUS_PER_NODE,
        health=Health.DEGRADED if degraded else Health.HEALTHY, action=Action.NONE, gpus=gpus,
        host=HostState(hostname=node, cpu_percent=round(rng.uniform(20, 60), 1), cpu_count=192,
                       load1=71.2, load5=70.8, load15=69.9,
                       memory_used_bytes=rng.randrange(500, 1500) * 1024**3,
                       memory_total_bytes=2048 * 1024**3,
                       disk_used_bytes=rng.randrange(1, 6) * 1024**4,
                       disk_total_bytes=7 * 1024**4, uptime_s=864_000.0),
        findings=findings,
    )  # fmt: skip


def online(index: int, seq: int) -> StatusMessage:
    return StatusMessage(
        cluster=CLUSTER, node=node_name(index), seq=seq, boot_id=boot_id_of(index),
        ts=time.time(), status="online",
    )  # fmt: skip


def warning_event(index: int, seq: int) -> EventMessage:
    return EventMessage(
        cluster=CLUSTER, node=node_name(index), seq=seq, boot_id=boot_id_of(index),
        ts=time.time(), kind=EventKind.XID, source="nvml", gpu_index=2, code="XID-13",
        xid=13, severity=Severity.WARNING, action=Action.RESTART_APP,
        message="XID 13: Graphics engine exception (usually an application fault)",
        observed_ts=time.time(),
    )  # fmt: skip


def fleet_messages(nodes: int, rounds: int, seed: int = 7) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) for the whole fleet: statuses, then ``rounds`` of states, events."""
    rng = random.Random(seed)
    for n in range(nodes):
        yield node_topic(CLUSTER, node_name(n), Kind.STATUS), encode(online(n, 0))
    for r in range(1, rounds + 1):
        for n in range(nodes):
            state = fleet_state(n, r, rng, degraded=n % DEGRADED_EVERY == 0)
            yield node_topic(CLUSTER, node_name(n), Kind.STATE), encode(state)
            if r == rounds and n % EVENT_EVERY == 0:
                yield node_topic(CLUSTER, node_name(n), Kind.EVENTS), encode(warning_event(n, r))


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
    step = max(1, total // 4)
    count = 0
    for topic, payload in fleet_messages(nodes, rounds):
        coordinator.ingestor.handle(topic, payload)
        count += 1
        if count % step == 0:
            print(f"  {label}: {count:,}/{total:,} messages", flush=True)
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
    sink = open(os.devnull, "w")  # noqa: SIM115 - the loggers write to it until exit
    with contextlib.redirect_stderr(sink):
        logs.configure("info", json=True)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
