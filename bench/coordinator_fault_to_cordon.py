"""From a fault event on the broker to the node cordoned in Kubernetes, with 1,000 nodes.

    python bench/coordinator_fault_to_cordon.py [--nodes 1000] [--faults 50]

Starts a private Mosquitto, the fake Kubernetes API server of the tests (``tests/fakekube.py``)
holding ``--nodes`` Ready nodes, and the real coordinator process (``python -m coordinator
--kube kubeconfig:...``: leader election on a Lease, the Kubernetes actuator, the audit log
on disk). A publisher process plays the fleet: every node says ``online`` and sends a full
8-GPU state every 10 s, the nodes spread evenly over the interval (100 messages a second for
1,000 nodes). Once the coordinator leads and its cluster feed counts every node, this script
publishes a critical XID 79 event for one random node at a time, 0.5-1.5 s apart, and
times it from the publish to the moment the fake API server receives the PATCH that cordons
that node (``spec.unschedulable``). Both clocks are this process's ``time.monotonic``.

The coordinator runs with ``--max-unhealthy 100%`` and ``--max-remediations-per-minute
100000``, so the safety gate never holds a fault back: the figure is the decision path, not
the rate limit (10 a minute by default) or the 10% cap, which would stop the run after a few.

The coordinator's JSON log splits each latency: publish -> "fault event" logged at ingest ->
"node transition" logged once the decision is audited -> PATCH. Target: p99 under 500 ms.
Exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.synchronize import Event as StopEvent
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench._common import (
    CLUSTER,
    DEGRADED_EVERY,
    close_paho,
    fleet_state,
    node_name,
    online,
    paho_subscriber,
    percentile,
    progress,
    scratch_broker,
    summary,
    xid_event,
)
from gpuwarden_common.health import Action, Severity
from gpuwarden_common.wire import (
    EventMessage,
    Kind,
    cluster_health_topic,
    encode,
    node_topic,
)
from tests.fakekube import FakeKube, running_fake_kube
from tests.processes import stop

TARGET_P99_MS = 500.0
INTERVAL_S = 10.0
CORDON_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 90.0
LEASE_NAMESPACE = "gpuwarden"


# --- the fleet: a separate process ----------------------------------------------------------


def publish_fleet(port: int, nodes: int, stop: StopEvent) -> None:
    """Runs in its own process: each node's state every INTERVAL_S, spread over it."""
    rng = random.Random(11)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    seq = 1
    try:
        while not stop.is_set():
            round_started = time.monotonic()
            for n in range(nodes):
                due = round_started + n * INTERVAL_S / nodes
                if stop.wait(max(0.0, due - time.monotonic())):
                    return
                name = node_name(n)
                if seq == 1:
                    client.publish(
                        node_topic(CLUSTER, name, Kind.STATUS), encode(online(n, 0)),
                        qos=1, retain=True,
                    )  # fmt: skip
                state = fleet_state(n, seq, rng, degraded=n % DEGRADED_EVERY == 0)
                client.publish(
                    node_topic(CLUSTER, name, Kind.STATE), encode(state), qos=1, retain=True
                )
            seq += 1
    finally:
        client.disconnect()
        client.loop_stop()


@contextmanager
def fleet_publisher(port: int, nodes: int) -> Iterator[None]:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=publish_fleet, args=(port, nodes, stop), name="bench-fleet")
    proc.start()
    try:
        yield
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


# --- the coordinator: the real process ------------------------------------------------------


def write_kubeconfig(path: Path, server_url: str) -> Path:
    """A kubeconfig for an API server that wants no credentials (the fake one)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fake\n  cluster: {{server: '{server_url}'}}\n"
        "users:\n- name: bench\n  user: {}\n"
        "contexts:\n- name: fake\n  context: {cluster: fake, user: bench}\n"
        "current-context: fake\n"
    )
    return path


@contextmanager
def coordinator_process(
    tmp: Path, broker_url: str, kube_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", kube_url)
    argv = [
        sys.executable, "-m", "coordinator", "--broker", broker_url, "--cluster", CLUSTER,
        "--kube", f"kubeconfig:{kubeconfig}", "--state", str(tmp / "state"), "--http", "off",
        "--max-unhealthy", "100%", "--max-remediations-per-minute", "100000",
        "--identity", "bench-coordinator", "--lease-namespace", LEASE_NAMESPACE,
        "--log-level", "info",
    ]  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    with (tmp / "coordinator.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=repo, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            yield proc
        finally:
            stop(proc)


# --- the faults: this process ---------------------------------------------------------------


class Mqtt:
    """This process's broker connection: publishes faults, follows the cluster feed."""

    def __init__(self, port: int) -> None:
        self.nodes_total = 0
        self.lifecycles: dict[str, int] = {}
        self._client = paho_subscriber(
            port, "bench-faults", cluster_health_topic(CLUSTER), self._on_message
        )

    def _on_message(self, message: paho.MQTTMessage) -> None:
        health = msgspec.json.decode(message.payload)
        self.nodes_total = int(health["nodes_total"])
        self.lifecycles = dict(health["nodes_by_lifecycle"])

    def publish(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

    def close(self) -> None:
        close_paho(self._client)


def fault_event(index: int, seq: int) -> EventMessage:
    return xid_event(
        index, seq, gpu_index=3, xid=79, severity=Severity.CRITICAL, action=Action.REBOOT,
        message="XID 79: GPU has fallen off the bus",
    )  # fmt: skip


@dataclass
class Fault:
    node: str
    published: float  # monotonic
    published_wall: float
    patched: float | None = None


@dataclass
class Run:
    faults: list[Fault] = field(default_factory=list)

    def latencies_ms(self) -> list[float]:
        return [(f.patched - f.published) * 1000 for f in self.faults if f.patched is not None]


def wait_ready(mqtt: Mqtt, nodes: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = -1
    while mqtt.nodes_total < nodes:
        if proc.poll() is not None:
            raise RuntimeError(f"the coordinator exited (code {proc.returncode}); see its log")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the coordinator's feed counts {mqtt.nodes_total} of {nodes} nodes after "
                f"{READY_TIMEOUT_S:g}s"
            )
        if mqtt.nodes_total != last:
            last = mqtt.nodes_total
            print(f"  cluster feed: {last:,}/{nodes:,} nodes", flush=True)
        time.sleep(0.5)
    print(f"  cluster feed: {nodes:,}/{nodes:,} nodes; the coordinator leads", flush=True)


def inject(kube: FakeKube, mqtt: Mqtt, nodes: int, faults: int, seed: int) -> Run:
    rng = random.Random(seed)
    run = Run()
    report = progress(faults, lambda done: f"  {done}/{faults} faults", parts=5)
    for n, index in enumerate(rng.sample(range(nodes), faults), 1):
        name = node_name(index)
        patched = threading.Event()
        fault = Fault(name, 0.0, 0.0)

        def on_patch(fault: Fault = fault, patched: threading.Event = patched) -> None:
            fault.patched = time.monotonic()
            patched.set()

        # the fake calls this on its own thread as the node's first PATCH arrives
        kube.before_next("PATCH", f"/api/v1/nodes/{name}", on_patch)
        payload = encode(fault_event(index, 1_000_000 + n))
        fault.published_wall = time.time()
        fault.published = time.monotonic()
        mqtt.publish(node_topic(CLUSTER, name, Kind.EVENTS), payload)
        run.faults.append(fault)
        if not patched.wait(CORDON_TIMEOUT_S):
            print(f"  {name}: no PATCH within {CORDON_TIMEOUT_S:g}s", flush=True)
        report(n)
        time.sleep(rng.uniform(0.5, 1.5))
    return run


def check_cordoned(kube: FakeKube, run: Run) -> int:
    """Faulted nodes the fake does not show cordoned by a PATCH (0 when all is well)."""
    wrong = 0
    for fault in run.faults:
        patches = kube.requests("PATCH", f"/api/v1/nodes/{fault.node}")
        cordoned = bool(kube.node(fault.node).get("spec", {}).get("unschedulable"))
        sets_it = bool(patches) and (patches[0].body or {}).get("spec", {}).get("unschedulable")
        if not (cordoned and sets_it):
            wrong += 1
    return wrong


# --- where the time goes, from the coordinator's log ----------------------------------------


def log_times(path: Path) -> dict[tuple[str, str], float]:
    """(event, node) -> first wall time of the coordinator's "fault event" and "node
    transition" lines."""
    found: dict[tuple[str, str], float] = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event, node = entry.get("event"), entry.get("node")
        if event in {"fault event", "node transition"} and isinstance(node, str):
            moment = datetime.fromisoformat(entry["timestamp"]).timestamp()
            found.setdefault((event, node), moment)
    return found


def segments(run: Run, log: Path) -> dict[str, list[float]]:
    times = log_times(log)
    parts: dict[str, list[float]] = {
        "publish -> ingested": [], "ingested -> decided": [], "decided -> PATCH": [],
    }  # fmt: skip
    for f in run.faults:
        ingested = times.get(("fault event", f.node))
        decided = times.get(("node transition", f.node))
        if f.patched is None or ingested is None or decided is None:
            continue
        patched_wall = f.published_wall + (f.patched - f.published)
        parts["publish -> ingested"].append((ingested - f.published_wall) * 1000)
        parts["ingested -> decided"].append((decided - ingested) * 1000)
        parts["decided -> PATCH"].append((patched_wall - decided) * 1000)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--faults", type=int, default=50)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if args.faults > args.nodes:
        parser.error("--faults cannot exceed --nodes (one fault per node)")
    with scratch_broker() as (tmp, broker), running_fake_kube() as kube:
        for n in range(args.nodes):
            kube.add_node(node_name(n), labels={"node.kubernetes.io/instance-type": "p5.48xlarge"})
        print(
            f"broker on port {broker.port}, fake API server at {kube.url} with {args.nodes:,} "
            f"nodes; coordinator with --max-unhealthy 100% --max-remediations-per-minute "
            f"100000",
            flush=True,
        )
        with (
            coordinator_process(tmp, broker.url, kube.url) as proc,
            fleet_publisher(broker.port, args.nodes),
        ):
            mqtt = Mqtt(broker.port)
            try:
                wait_ready(mqtt, args.nodes, proc)
                coordinator = psutil.Process(proc.pid)
                cpu_before, wall_before = sum(coordinator.cpu_times()[:2]), time.monotonic()
                run = inject(kube, mqtt, args.nodes, args.faults, args.seed)
                cpu_share = (sum(coordinator.cpu_times()[:2]) - cpu_before) / (
                    time.monotonic() - wall_before
                )
                time.sleep(1.0)  # the cluster feed catches up, for the line below
                print(
                    f"  coordinator CPU while faults ran: {cpu_share:.0%} of a core; feed "
                    f"says {mqtt.lifecycles}",
                    flush=True,
                )
            finally:
                mqtt.close()
        wrong = check_cordoned(kube, run)
        parts = segments(run, tmp / "coordinator.log")
    latencies = run.latencies_ms()
    missing = len(run.faults) - len(latencies)
    print(f"  publish -> PATCH:      {summary(latencies)}", flush=True)
    for label, values in parts.items():
        print(f"    {label:<20} {summary(values)}", flush=True)
    if wrong:
        print(f"  {wrong} faulted nodes are not cordoned by their first PATCH", flush=True)
    if not latencies:
        print("result: no node was cordoned: FAIL", flush=True)
        sys.exit(1)
    p99 = percentile(latencies, 99)
    ok = p99 < TARGET_P99_MS and missing == 0 and wrong == 0
    print(
        f"result: fault -> cordon p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms "
        f"over {len(latencies)} faults, {missing} never cordoned (target p99 < "
        f"{TARGET_P99_MS:g} ms, all cordoned): {'PASS' if ok else 'FAIL'}",
        flush=True,
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
