"""How fast the coordinator takes agent state messages, next to a bare MQTT subscriber.

    python -m bench.ingest_throughput [--messages 20000] [--nodes 100]

Starts a private Mosquitto, then for each of two consumers, (a) a bare aiomqtt subscriber
and (b) the Ingestor with a sink that does nothing:

1. the consumer opens a persistent session, subscribes, and goes away;
2. a separate process publishes N realistic 8-GPU state messages (QoS 1) as fast as the
   broker acknowledges them, which the broker queues for the absent consumer;
3. the consumer comes back and drains the backlog; its rate is N over the time from its
   first message to its last.

Draining a backlog measures the consumer's own ceiling: a live run would only measure the
publisher whenever it is the slower side. Each consumer is measured twice: its wall-clock
drain rate (this machine and broker only, and noisy when other work shares the CPUs) and
its messages per CPU-second of its own process (its intrinsic cost, portable). Targets:
the Ingestor >= 4,000 msg/s wall-clock here, and >= 0.8 of the bare subscriber's messages
per CPU-second. Exits 1 when a target is missed.

The states carry what an agent with attribution on sends (an owner per GPU). The ledger is
not on this path: it samples the model every few seconds and writes from a thread, so it
adds nothing per message. The Ingestor takes each message where paho reads it, while the
bare subscriber iterates aiomqtt's ``client.messages`` (a task per message), so the
Ingestor can come out ahead of a bare subscriber that also decodes (the reference line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from bench._common import CLUSTER, progress, scratch_broker
from coordinator.ingest import Ingestor, IngestStats
from coordinator.ingest_gate import IngestGate
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.health import Action, Finding, Health, Severity
from gpuwarden_common.wire import (
    EccCounts,
    EventMessage,
    GpuOwner,
    GpuProcess,
    GpuState,
    HostState,
    Kind,
    NvLink,
    Pcie,
    RowRemap,
    StateMessage,
    StatusMessage,
    agent_subscriptions,
    decode,
    encode,
    node_topic,
)

TARGET_RATE = 4000.0
TARGET_RATIO = 0.8  # of the bare subscriber's messages per CPU-second


def realistic_state(node: str, seq: int, gpus: int = 8) -> StateMessage:
    """What an 8-GPU training node reports: every field read, a few processes per GPU,
    attributed to the pod they run in (the agent's ``--proc-root`` on)."""
    return StateMessage(
        cluster=CLUSTER, node=node, seq=seq, boot_id="3f1c9a52-8e7b-4d6f-a0c1-5b2e9d7f4a10",
        ts=time.time(), interval_s=10, instance_type="p5.48xlarge", driver_version="550.90.07",
        gpus_expected=gpus, health=Health.DEGRADED, action=Action.NONE,
        gpus=[
            GpuState(
                index=i, uuid=f"GPU-{i:08x}-1c2d-3e4f-5a6b-7c8d9e0f1a2b",
                name="NVIDIA H100 80GB HBM3",
                serial=f"165232100{i:04d}", pci_bus_id=f"00000000:{0x18 + i * 0x10:02X}:00.0",
                health=Health.HEALTHY if i != 3 else Health.DEGRADED, action=Action.NONE,
                utilization_gpu_pct=97.0, utilization_memory_pct=61.0,
                memory_used_bytes=71_000_000_000, memory_total_bytes=85_899_345_920,
                temperature_c=63.0, power_draw_w=612.4, power_limit_w=700.0,
                clock_sm_mhz=1980, clock_mem_mhz=2619, clock_event_reasons=["sw_power_cap"],
                ecc_enabled=True,
                ecc=EccCounts(volatile_corrected=2, volatile_uncorrected=0,
                              aggregate_corrected=14, aggregate_uncorrected=0),
                row_remap=RowRemap(correctable=1), pcie=Pcie(gen=5, max_gen=5, width=16,
                                                             max_width=16, replay_count=0),
                nvlink=NvLink(links_total=18, links_up=18),
                utilization_source="samples", utilization_window_s=10.0,
                processes=[
                    GpuProcess(pid=41_000 + i * 10 + p, used_memory_bytes=17_000_000_000,
                               name="/usr/bin/python3")
                    for p in range(4)
                ],
                # attribution on: the training pod that owns all four processes
                owners=[
                    GpuOwner(kind="k8s-pod", pod_uid="5c3b8e3a-2f6d-4c1e-9a7b-0d8e6f4a2b1c",
                             container_id="containerd://9f86d081884c7d659a2feaa0c55ad015a3bf4f"
                                          "1b2b0b822cd15d6c15b0f00a08",
                             pids=[41_000 + i * 10 + p for p in range(4)],
                             used_memory_bytes=68_000_000_000, sm_util_pct=96.0,
                             memory_util_pct=60.0)
                ],
            )
            for i in range(gpus)
        ],
        host=HostState(hostname=node, cpu_percent=38.5, cpu_count=192, load1=71.2, load5=70.8,
                       load15=69.9, memory_used_bytes=1_100_000_000_000,
                       memory_total_bytes=2_000_000_000_000, disk_used_bytes=3_000_000_000_000,
                       disk_total_bytes=7_600_000_000_000, uptime_s=864_000.0),
        attribution="cgroup",
        findings=[
            Finding(check="ecc", severity=Severity.WARNING, code="ECC-SBE-RATE",
                    message="GPU 3: corrected ECC errors rising", gpu_index=3),
        ],
    )  # fmt: skip


# --- the publisher process ---------------------------------------------------------------------


def publish(port: int, messages: int, nodes: int) -> None:
    """Runs in its own process: publish ``messages`` states round-robin over ``nodes``."""
    names = [f"gpu-node-{n:04d}" for n in range(nodes)]
    payloads = [
        (node_topic(CLUSTER, names[i % nodes], Kind.STATE),
         encode(realistic_state(names[i % nodes], seq=i // nodes + 1)))
        for i in range(messages)
    ]  # fmt: skip
    acked = threading.Semaphore(0)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *_args: acked.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    for topic, payload in payloads:
        client.publish(topic, payload, qos=1)
    for _ in range(messages):
        acked.acquire()
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    print(
        f"  publisher: {messages} messages of {len(payloads[0][1]):,} bytes acknowledged "
        f"in {elapsed:.2f}s ({messages / elapsed:,.0f} msg/s)",
        flush=True,
    )


def publish_backlog(port: int, messages: int, nodes: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=publish, args=(port, messages, nodes), name="bench-publisher")
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"the publisher process failed (exit {proc.exitcode})")


# --- the consumers -------------------------------------------------------------------------------


class Stopwatch:
    """First to ``target``-th tick; ``done`` fires at the last. ``label`` names its progress
    lines."""

    def __init__(self, target: int, label: str) -> None:
        self.target = target
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.done = asyncio.Event()
        self._report = progress(target, lambda n: f"  {label}: {n:,}/{target:,}")

    def tick(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            self.cpu_first = time.process_time()
        self.count += 1
        self._report(self.count)
        if self.count == self.target:
            self.last = now
            self.cpu_last = time.process_time()
            self.done.set()

    def rate(self) -> float:
        assert self.first is not None and self.last is not None
        return (self.count - 1) / (self.last - self.first)

    def cpu_rate(self) -> float:
        """Messages per CPU-second of this process (every thread: paho's and the loop's):
        the consumer's own cost, which other work on the machine does not change."""
        return (self.count - 1) / (self.cpu_last - self.cpu_first)


async def forget_session(port: int, client_id: str) -> None:
    """A clean connect ends a persistent session, so it stops collecting the next phase's
    messages."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=True):
        pass


@dataclass(frozen=True)
class Rates:
    wall: float  # messages per second of the drain (this machine, this broker)
    cpu: float  # messages per CPU-second of the consumer's process (its own cost)


async def bare_rate(port: int, messages: int, nodes: int, *, decoding: bool = False) -> Rates:
    """A subscriber that only counts, or (``decoding``) also runs ``wire.decode``: the cost
    no ingest path can avoid, shown to tell the Ingestor's own overhead from it."""
    client_id = "bench-bare"
    subs = [(t, 1) for t in agent_subscriptions(CLUSTER)]
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=client_id, clean_session=False
    ) as client:
        await client.subscribe(subs)
    await asyncio.to_thread(publish_backlog, port, messages, nodes)
    label = "bare subscriber + decode" if decoding else "bare subscriber"
    watch = Stopwatch(messages, label)
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=client_id, clean_session=False
    ) as client:
        await client.subscribe(subs)
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                if decoding:
                    decode(message.topic.value, message.payload)
                watch.tick()
            if watch.done.is_set():
                break
    await forget_session(port, client_id)
    return Rates(watch.rate(), watch.cpu_rate())


class CountingSink:
    """The sink that does nothing but count, so the Ingestor's own cost is what is measured."""

    def __init__(self, watch: Stopwatch) -> None:
        self._watch = watch

    def on_status(self, msg: StatusMessage) -> None:
        self._watch.tick()

    def on_state(self, msg: StateMessage) -> None:
        self._watch.tick()

    def on_event(self, msg: EventMessage) -> None:
        self._watch.tick()


async def ingest_rate(port: int, messages: int, nodes: int) -> tuple[Rates, IngestStats]:
    client_id = "bench-ingest"
    watch = Stopwatch(messages, "ingestor")
    gate = IngestGate(CLUSTER, CollectorRegistry())
    settings = BrokerSettings.from_url(f"mqtt://127.0.0.1:{port}")

    def ingestor() -> Ingestor:
        return Ingestor(
            settings, CLUSTER, CountingSink(watch), gate,
            client_id=client_id, persistent_session=True,
        )  # fmt: skip

    first = ingestor()
    task = asyncio.create_task(first.run())
    await first.wait_connected()  # the session and its subscriptions now exist
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(publish_backlog, port, messages, nodes)
    second = ingestor()
    task = asyncio.create_task(second.run())
    try:
        await watch.done.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await forget_session(port, client_id)
    return Rates(watch.rate(), watch.cpu_rate()), second.stats()


async def main_async(args: argparse.Namespace) -> int:
    bare: list[Rates] = []
    decoding: list[Rates] = []
    ingest: list[Rates] = []
    with scratch_broker() as (_tmp, broker):
        print(
            f"broker on port {broker.port}; {args.rounds} rounds of {args.messages:,} state "
            f"messages over {args.nodes} nodes",
            flush=True,
        )
        # interleaved rounds: a burst of noise on the machine hits every side alike
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}: (a) bare aiomqtt subscriber", flush=True)
            bare.append(await bare_rate(broker.port, args.messages, args.nodes))
            print(f"  bare subscriber: {_show(bare[-1])}", flush=True)
            print(f"round {round_no}: (b) Ingestor, null sink", flush=True)
            rates, stats = await ingest_rate(broker.port, args.messages, args.nodes)
            ingest.append(rates)
            print(
                f"  ingestor: {_show(rates)} (accepted {stats.accepted:,}, rejected "
                f"{stats.rejected:,}, internal errors {stats.internal_errors:,})",
                flush=True,
            )
            print(f"round {round_no}: (ref) bare subscriber + wire.decode", flush=True)
            decoding.append(await bare_rate(broker.port, args.messages, args.nodes, decoding=True))
            print(f"  bare subscriber + decode: {_show(decoding[-1])}", flush=True)
    wall = {k: statistics.median(r.wall for r in v)
            for k, v in (("bare", bare), ("ingest", ingest), ("decode", decoding))}  # fmt: skip
    cpu = {k: statistics.median(r.cpu for r in v)
           for k, v in (("bare", bare), ("ingest", ingest), ("decode", decoding))}  # fmt: skip
    cpu_ratio = cpu["ingest"] / cpu["bare"]
    ok = wall["ingest"] >= TARGET_RATE and cpu_ratio >= TARGET_RATIO
    print(
        f"reference (medians): a bare subscriber that also runs wire.decode takes "
        f"{cpu['decode']:,.0f} msg per CPU-second; the Ingestor {cpu['ingest']:,.0f} "
        f"({cpu['ingest'] / cpu['decode']:.2f} of it); wall-clock drain ratio ingestor/bare "
        f"{wall['ingest'] / wall['bare']:.2f} (noisy on a shared machine)",
        flush=True,
    )
    print(
        f"result (medians): ingestor {wall['ingest']:,.0f} msg/s here (target >= "
        f"{TARGET_RATE:,.0f}, this machine only); per CPU-second ingestor {cpu['ingest']:,.0f} "
        f"vs bare {cpu['bare']:,.0f}, ratio {cpu_ratio:.2f} (target >= {TARGET_RATIO}, "
        f"portable): {'PASS' if ok else 'FAIL'}",
        flush=True,
    )
    return 0 if ok else 1


def _show(rates: Rates) -> str:
    return f"{rates.wall:,.0f} msg/s, {rates.cpu:,.0f} msg per CPU-second"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
