"""``gpuwarden demo``: the whole system on one machine, with a simulated fleet.

An embedded broker, the coordinator (local actuator, task governance on the simulated
cluster), 16 simulated agents of 8 GPUs each running the real agent code over the fake NVML
module, and a schedule of faults: an XID 79, an ECC double-bit error, a row-remap failure and
a node going silent, then reboots. A live terminal view shows what happens; the dashboard is
served too. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent.__main__ import serve_agent
from agent.daemon import Agent
from agent.settings import parse_settings as parse_agent_settings
from agent.sim.fake_pynvml import FakeNvml
from coordinator.__main__ import static_dir
from coordinator.api import build_app
from coordinator.audit import AuditKind, AuditLog
from coordinator.backends.local.actuator import LocalActuator
from coordinator.backends.local.sim_governor import SimGovernor, SimLine
from coordinator.daemon import Coordinator
from coordinator.demo_lines import governance_line, lifecycle_line
from coordinator.embedded_broker import EmbeddedBroker
from coordinator.governance.policy import load_policy
from coordinator.governance.workload import load_workload
from coordinator.settings import parse_settings as parse_coordinator_settings
from gpuwarden_common import logs
from gpuwarden_common.daemon import StartupError
from gpuwarden_common.http import serve

CLUSTER = "demo"
DATA = Path(__file__).parent / "data"  # the demo policy and workload ship with the package


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the fleet is up
    node: str
    what: str  # a FakeNvml fault kind, or "silence" / "return" / "reboot"
    gpu: int = 0
    xid: int | None = None
    say: str = ""


SCHEDULE = (
    Step(15, "gpu-node-009", "xid", 2, 79, "XID 79 on gpu-node-009 GPU 2: fallen off the bus"),
    Step(30, "gpu-node-010", "ecc_dbe", 5, None, "ECC double-bit error on gpu-node-010 GPU 5"),
    Step(45, "gpu-node-011", "remap_failure", 1, None, "row-remap failure on gpu-node-011 GPU 1"),
    Step(60, "gpu-node-014", "silence", say="gpu-node-014's agent goes silent"),
    Step(80, "gpu-node-009", "reboot", say="gpu-node-009 reboots (new boot, faults gone)"),
    Step(100, "gpu-node-014", "return", say="gpu-node-014's agent is back"),
    Step(110, "gpu-node-010", "reboot", say="gpu-node-010 reboots"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FleetNode:
    """One simulated GPU node: the real agent over a fake NVML, restartable as a reboot."""

    name: str
    broker_url: str
    interval_s: float
    nvml: FakeNvml | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def boot(self) -> None:
        settings = parse_agent_settings(
            ["--broker", self.broker_url, "--cluster", CLUSTER, "--node", self.name,
             "--gpu-backend", "sim", "--http", "off", "--kmsg", "off",
             "--interval", str(self.interval_s), "--instance-type", "p5.48xlarge"], {},
        )
        self.nvml = FakeNvml(gpus=8, seed=self.name)
        agent = Agent(settings, self.nvml, boot_id=uuid.uuid4().hex)
        await agent.start_nvml()
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(serve_agent(agent, self.stop), name=f"agent-{self.name}")

    async def halt(self, *, goodbye: bool = True) -> None:
        if self.task is None:
            return
        if goodbye:
            self.stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 15)
        else:  # cut off: no offline status, the coordinator only sees silence
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        self.task = None


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # a state directory the demo made for itself is its own to remove if it never ran
        self.owns_state_dir = not args.state
        self.state_dir = Path(args.state or tempfile.mkdtemp(prefix="gpuwarden-demo-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = args.broker_port or _free_port()
        self.broker_url = f"mqtt://127.0.0.1:{self.port}"
        self.started = time.monotonic()  # the time axis of every line; reset as the fleet starts
        self.running = False
        self._told_id = 0  # the last audit entry --no-live has told
        self.said: list[tuple[float, str]] = []
        self.fleet: dict[str, FleetNode] = {}

    def say(self, text: str) -> None:
        self.said.append((time.monotonic() - self.started, text))
        if not self.args.live:
            print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def discard_state(self) -> None:
        """After a failed start: leave no temporary directory behind (never one given with
        ``--state``)."""
        if self.owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _on_sim_line(self, line: SimLine) -> None:
        told = governance_line(line)
        if told is not None and not self.args.live:
            # a requeue follows the node decision that caused it: tell that one first
            self._tell_decisions()
            self.say(told)

    def _tell_decisions(self) -> None:
        """``--no-live``: one line per lifecycle decision not told yet, from the audit log
        (a local SQLite read of a few rows: quick enough for the demo's event loop)."""
        for entry in sorted(self.audit.query(kind=AuditKind.DECISION, limit=500),
                            key=lambda e: e.id):  # fmt: skip
            if entry.id <= self._told_id:
                continue
            self._told_id = entry.id
            told = lifecycle_line({"kind": entry.kind.value, "details": entry.details,
                                   "node": entry.node, "action": entry.action,
                                   "reason": entry.reason, "dry_run": entry.dry_run})  # fmt: skip
            if told is not None:
                self.say(told)

    async def _narrate(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._tell_decisions()

    async def run(self, stop: asyncio.Event) -> int:
        policy = load_policy(DATA / "demo-policy.yaml")
        workload = load_workload(DATA / "demo-workload.yaml", policy)
        settings = parse_coordinator_settings(
            ["--broker", self.broker_url, "--cluster", CLUSTER, "--kube", "off",
             "--state", str(self.state_dir), "--http", self.args.http,
             "--offline-grace", "10", "--recovery-stable", "20", "--max-unhealthy", "25%",
             "--identity", "demo-coordinator"], {},
        )
        broker = EmbeddedBroker("127.0.0.1", self.port)
        await broker.start()
        audit = self.audit = AuditLog(self.state_dir / "audit.sqlite3", durable=False)
        governor = SimGovernor(policy, workload, audit, "demo-coordinator", speed=self.args.speed,
                               on_line=self._on_sim_line)
        coordinator = Coordinator(
            settings, actuator=LocalActuator(self.state_dir / "marks.json"), audit=audit,
            governance=governor,
        )
        self.coordinator, self.governor = coordinator, governor
        runner = None
        tasks: list[asyncio.Task[Any]] = []
        try:
            if settings.http is not None:
                app = build_app(coordinator, coordinator.registry, api_token=None,
                                static_dir=static_dir())
                runner = await serve(app, settings.http)
            tasks.append(asyncio.create_task(coordinator.run(), name="coordinator"))
            self.started, self.running = time.monotonic(), True
            nodes = workload.cluster.node_names()
            self.say(f"starting {len(nodes)} simulated nodes x 8 GPUs on {self.broker_url}")
            for name in nodes:
                node = self.fleet[name] = FleetNode(name, self.broker_url, self.args.interval)
                await node.boot()
            url = (f"http://{settings.http.host}:{settings.http.port}/"
                   if settings.http else "(off)")
            self.say(f"fleet up; dashboard: {url}; logs: {self.state_dir / 'demo.log'}")
            tasks.append(asyncio.create_task(self._play(), name="schedule"))
            if self.args.live:
                tasks.append(asyncio.create_task(self._live(url, stop), name="live-view"))
            else:
                tasks.append(asyncio.create_task(self._narrate(), name="narrator"))
            deadline = self.args.duration
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks[:1]], timeout=deadline,
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not waiter and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            waiter.cancel()
        finally:
            if self.running:
                self.say("stopping")
            stop.set()
            # the coordinator first: agents saying goodbye must not read as silent nodes
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for node in self.fleet.values():
                await node.halt()
            if runner is not None:
                await runner.cleanup()
            await broker.stop()
            audit.close()
        self._summary()
        return 0

    async def _play(self) -> None:
        for step in SCHEDULE:
            delay = step.at - (time.monotonic() - self.started)
            if delay > 0:
                await asyncio.sleep(delay)
            node = self.fleet[step.node]
            self.say(step.say)
            if step.what == "silence":
                await node.halt(goodbye=False)
            elif step.what == "return":
                await node.boot()
            elif step.what == "reboot":
                await node.halt()
                await asyncio.sleep(2)
                await node.boot()
            elif node.nvml is not None:
                node.nvml.inject(step.gpu, step.what, xid=step.xid)

    # --- the terminal view ------------------------------------------------------------------
    async def _live(self, url: str, stop: asyncio.Event) -> None:
        console = Console()
        with Live(self._view(url), console=console, refresh_per_second=2,
                  screen=False) as live:
            while not stop.is_set():
                await asyncio.sleep(0.5)
                live.update(self._view(url))

    def _view(self, url: str) -> Group:
        c = self.coordinator.cluster()
        cap = c["capacity"]
        head = Text.assemble(
            ("gpuwarden demo", "bold"), f"  t={time.monotonic() - self.started:5.0f}s  ",
            f"simulated {self.governor.sim.now / 3600:5.1f} h  ",
            f"dashboard {url}  Ctrl-C to stop\n",
            f"GPUs {cap['gpus_total']}  healthy ", (str(cap["gpus_healthy"]), "green"),
            "  unhealthy ", (str(cap["gpus_unhealthy"]), "red"),
            "  pending recovery ", (str(cap["gpus_pending_recovery"]), "yellow"),
            f"  utilization {c['utilization_pct'] or 0:.0f}%",
        )
        if c["remediation_paused"]:
            head.append(f"\nREMEDIATION PAUSED: {c['paused_reason']}", "bold red")
        nodes = Table(title="nodes not healthy", expand=False)
        for col in ("node", "lifecycle", "health", "action", "reason"):
            nodes.add_column(col)
        for n in self.coordinator.nodes():
            if n["lifecycle"] != "healthy":  # Text: agent-supplied strings are not markup
                nodes.add_row(*(Text(str(v)) for v in (
                    n["name"], n["lifecycle"], n["health"], n["action"], (n["reason"] or "")[:60],
                )))
        teams = Table(title="teams (GPUs)")
        for col in ("team", "quota", "allocated", "borrowed", "lent", "pending"):
            teams.add_column(col, justify="right")
        for t in self.coordinator.teams():
            teams.add_row(t["name"], str(t["quota"]), str(t["allocated"]), str(t["borrowed"]),
                          str(t["lent"]), str(t["pending_tasks"]))
        classes = Table(title="tasks by priority class")
        for col in ("class", "running", "pending", "preempted", "avg wait"):
            classes.add_column(col, justify="right")
        for k in self.coordinator.priority_classes():
            classes.add_row(k["name"], str(k["running"]), str(k["pending"]),
                            str(k["preempted"]), f"{k['avg_wait_s'] / 60:.0f}m")
        events = Table(title="what happened", show_header=False, expand=False)
        events.add_column("t", justify="right")
        events.add_column("event")
        lines = list(self.said)
        for sim in self.governor.recent:
            told = governance_line(sim)
            if told is not None:
                lines.append((self._since(sim.at), told))
        for entry in self.coordinator.audit(None, None, 40):
            told = lifecycle_line(entry)
            if told is not None:
                lines.append((self._since(entry["ts"]), told))
        for when, what in sorted(lines)[-14:]:
            events.add_row(f"{when:5.0f}s", Text(what[:130]))
        return Group(head, nodes, teams, classes, events)

    def _since(self, wall_ts: float) -> float:
        """A wall-clock time as seconds since the fleet started (the view's time axis)."""
        return wall_ts - time.time() + time.monotonic() - self.started

    def _summary(self) -> None:
        counts = self.governor.counts
        print(
            f"demo summary: {len(self.fleet)} nodes; governance events: "
            f"{counts['admit']} admitted, {counts['preempt']} preempted, "
            f"{counts['requeue']} requeued, {counts['fault']} node faults; "
            f"state and audit log in {self.state_dir}", flush=True,
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuwarden demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--http", default="127.0.0.1:8080",
                   help="where the dashboard and API listen (default %(default)s)")
    p.add_argument("--broker-port", type=int, default=0,
                   help="embedded broker port (default: a free one)")
    p.add_argument("--speed", type=float, default=120.0,
                   help="simulated seconds of task time per real second (default %(default)s)")
    p.add_argument("--interval", type=float, default=5.0, help="agent snapshot interval")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--state", default=None, help="state directory (default: a new temp dir)")
    p.add_argument("--no-live", dest="live", action="store_false",
                   help="print one line per event instead of the live view")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    demo = Demo(args)

    async def amain() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await demo.run(stop)

    try:
        with (demo.state_dir / "demo.log").open("a") as log_file:
            logs.configure("info", json=True, file=log_file)
            return asyncio.run(amain())
    except StartupError as exc:
        demo.discard_state()
        print(f"gpuwarden demo: {exc}", file=sys.stderr)
        return 2
