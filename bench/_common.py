"""What the benchmark scripts share: figures, progress lines, a scratch broker, and a fleet.

Not a benchmark itself. Each script keeps its own measurement; what is here is only what
two or more of them did the same way, so a figure printed by one reads like the others'.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

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
from tests.brokers import Mosquitto, running_mosquitto
from tests.proc_tree import make_proc_tree

CLUSTER = "bench"
SUBSCRIBE_TIMEOUT_S = 10.0

# --- figures -----------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile: always one of ``values``, never an interpolation."""
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


def summary(values_ms: list[float], decimals: int = 1) -> str:
    """``p50 .. ms, p99 .. ms, max .. ms``: how every latency in the benchmarks is printed."""
    if not values_ms:
        return "no samples"
    return (
        f"p50 {statistics.median(values_ms):.{decimals}f} ms, "
        f"p99 {percentile(values_ms, 99):.{decimals}f} ms, "
        f"max {max(values_ms):.{decimals}f} ms"
    )


def progress(total: int, line: Callable[[int], str], parts: int = 4) -> Callable[[int], None]:
    """A reporter to call with the count done so far; it prints ``line(done)`` each time
    another ``1/parts`` of ``total`` is done, so a long run shows it is alive."""
    step = max(1, total // parts)

    def report(done: int) -> None:
        if done % step == 0:
            print(line(done), flush=True)

    return report


def sim_proc_tree(root: Path, gpus: int, seed: str, workers: int) -> list[int]:
    """A /proc tree on disk with the cgroup file of every process a simulated node (``seed``)
    runs with ``workers`` per GPU, as ``--proc-root`` reads it; the pids, in GPU order."""
    from agent.sim.workloads import demo_processes  # noqa: PLC0415 - only the agent benches

    processes = [p for i in range(gpus) for p in demo_processes(i, seed, workers)]
    make_proc_tree(root, {p.pid: p.cgroup for p in processes})
    return [p.pid for p in processes]


# --- the product's logs ------------------------------------------------------------------------


def quiet_product_logs() -> None:
    """The product logs as in production (JSON, so each line still costs its write), to
    /dev/null, so that the figures stay readable."""
    sink = open(os.devnull, "w")  # noqa: SIM115 - the loggers write to it until exit
    with contextlib.redirect_stderr(sink):
        logs.configure("info", json=True)


# --- a private broker and clients of it --------------------------------------------------------


@contextlib.contextmanager
def scratch_broker() -> Iterator[tuple[Path, Mosquitto]]:
    """A temporary directory and a private Mosquitto on a free loopback port, both gone after."""
    with (
        tempfile.TemporaryDirectory(prefix="gpuwarden-bench-") as tmp,
        running_mosquitto(Path(tmp) / "mosquitto") as broker,
    ):
        yield Path(tmp), broker


def paho_subscriber(
    port: int, client_id: str, topic: str, on_message: Callable[[paho.MQTTMessage], None]
) -> paho.Client:
    """A paho client on its own network thread, subscribed to ``topic`` (QoS 1) before it is
    returned; ``on_message`` runs on that thread. Stop it with :func:`close_paho`."""
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_connect = lambda c, *_args: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_message = lambda _client, _userdata, message: on_message(message)
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(SUBSCRIBE_TIMEOUT_S):
        close_paho(client)
        raise RuntimeError(f"{client_id} could not subscribe to {topic}")
    return client


def close_paho(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


# --- a realistic fleet -------------------------------------------------------------------------

GPUS_PER_NODE = 8
INSTANCE_TYPES = ("p5.48xlarge", "p4d.24xlarge", "p5e.48xlarge")
DEGRADED_EVERY = 20
EVENT_EVERY = 100


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


def xid_event(
    index: int,
    seq: int,
    *,
    gpu_index: int,
    xid: int,
    severity: Severity,
    action: Action,
    message: str,
) -> EventMessage:
    """An XID event from node ``index`` as its agent sends it, caught by the NVML watcher."""
    return EventMessage(
        cluster=CLUSTER, node=node_name(index), seq=seq, boot_id=boot_id_of(index),
        ts=time.time(), kind=EventKind.XID, source="nvml", gpu_index=gpu_index,
        code=f"XID-{xid}", xid=xid, severity=severity, action=action, message=message,
        observed_ts=time.time(),
    )  # fmt: skip


def warning_event(index: int, seq: int) -> EventMessage:
    return xid_event(
        index, seq, gpu_index=2, xid=13, severity=Severity.WARNING, action=Action.RESTART_APP,
        message="XID 13: Graphics engine exception (usually an application fault)",
    )  # fmt: skip


def fleet_messages(nodes: int, rounds: int, seed: int = 7) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) for the whole fleet: statuses, then ``rounds`` of states, events.

    One node in DEGRADED_EVERY reports a degraded GPU; in the last round one node in
    EVENT_EVERY also sends a warning XID. Payloads are made one at a time, so none is held
    but by whoever consumes them.
    """
    rng = random.Random(seed)
    for n in range(nodes):
        yield node_topic(CLUSTER, node_name(n), Kind.STATUS), encode(online(n, 0))
    for r in range(1, rounds + 1):
        for n in range(nodes):
            state = fleet_state(n, r, rng, degraded=n % DEGRADED_EVERY == 0)
            yield node_topic(CLUSTER, node_name(n), Kind.STATE), encode(state)
            if r == rounds and n % EVENT_EVERY == 0:
                yield node_topic(CLUSTER, node_name(n), Kind.EVENTS), encode(warning_event(n, r))
