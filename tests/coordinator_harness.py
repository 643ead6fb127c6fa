"""A coordinator under test, and the world around it, for the end-to-end tests.

- :func:`coordinator_settings` builds real ``CoordinatorSettings`` from flags, as ``gpuwarden
  coordinator`` would, with short timings (offline grace 1 s, recovery stable 1 s), a free
  HTTP port, a state directory, and a kubeconfig that points at the fake API server.
- :func:`running_coordinator` runs ``coordinator.__main__.run`` itself (HTTP API, leader
  election, Kubernetes actuator: all of it) on the test's event loop; :class:`Api` talks to it
  over HTTP.
- :func:`elected_coordinator` builds a ``Coordinator`` by hand with a short Lease, for the
  leader election tests, where a leader must die without releasing its lease.
- :class:`Fleet` is a light publisher of valid agent messages (built from the
  ``gpuwarden_common.wire`` structs) for any number of fake nodes, with a heartbeat so they
  stay alive under the short offline grace.
- :func:`alert_receiver` is a tiny webhook that records the alerts posted to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import aiomqtt
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from coordinator.__main__ import run
from coordinator.actuators import ActionResult, Actuator, MarkFact, NodeFacts, NodeMark
from coordinator.audit import AuditLog
from coordinator.backends.kubernetes.actuator import KubeActuator
from coordinator.backends.kubernetes.client import api_client_for_url
from coordinator.backends.kubernetes.leader import LeaderElector, LeaseSettings, leader_identity
from coordinator.daemon import Coordinator
from coordinator.settings import CoordinatorSettings, parse_settings
from gpuwarden_common.health import Action, Finding, Health, Severity
from gpuwarden_common.wire import (
    EventKind,
    EventMessage,
    GpuState,
    HostState,
    Kind,
    StateMessage,
    StatusMessage,
    encode,
    node_topic,
)
from tests.brokers import free_port
from tests.fakekube import FakeKube

T = TypeVar("T")

CLUSTER = "c1"  # what tests/agent_process.py gives the real agents
OFFLINE_GRACE_S = 1.0
RECOVERY_STABLE_S = 1.0
# Under the offline grace, and under the longest report gap the recovery clock tolerates.
HEARTBEAT_S = 0.25
LEASE_NAMESPACE = "gpuwarden"
# Generous bounds on waits: they keep a broken build from hanging, they measure nothing.
WAIT_S = 15.0


# --- waiting ----------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool] = bool,
    *,
    within: float = WAIT_S,
    what: str = "the condition",
) -> T:
    """Poll ``probe`` until ``accept`` takes its answer; fail saying what was last seen."""
    deadline = time.monotonic() + within
    while True:
        seen = await probe()
        if accept(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within:g}s; last saw {seen!r}")
        await asyncio.sleep(0.05)


# --- settings ---------------------------------------------------------------------------------


def write_kubeconfig(path: Path, server_url: str) -> Path:
    """A kubeconfig for an API server that wants no credentials (the fake one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        f"clusters:\n- name: fake\n  cluster: {{server: '{server_url}'}}\n"
        "users:\n- name: tester\n  user: {}\n"
        "contexts:\n- name: fake\n  context: {cluster: fake, user: tester}\n"
        "current-context: fake\n"
    )
    return path


def coordinator_argv(
    tmp: Path,
    *,
    broker_url: str,
    kube: FakeKube | None,
    flags: Sequence[str] = (),
    identity: str = "coord-a",
    state_dir: Path | None = None,
) -> list[str]:
    """``gpuwarden coordinator`` flags with short timings (offline grace 1 s, recovery stable
    1 s), a free HTTP port, a state directory, and a kubeconfig for the fake API server;
    ``flags`` come last, so they override these."""
    kube_flag = (
        "off" if kube is None else f"kubeconfig:{write_kubeconfig(tmp / 'kubeconfig', kube.url)}"
    )
    return [
        "--broker", broker_url,
        "--cluster", CLUSTER,
        "--kube", kube_flag,
        "--state", str(state_dir or tmp / f"state-{identity}"),
        "--http", f"127.0.0.1:{free_port()}",
        "--offline-grace", f"{OFFLINE_GRACE_S:g}",
        "--recovery-stable", f"{RECOVERY_STABLE_S:g}",
        "--identity", identity,
        "--lease-namespace", LEASE_NAMESPACE,
        "--log-level", "warning",
        *flags,
    ]  # fmt: skip


def coordinator_settings(
    tmp: Path,
    *,
    broker_url: str,
    kube: FakeKube | None,
    flags: Sequence[str] = (),
    identity: str = "coord-a",
    state_dir: Path | None = None,
) -> CoordinatorSettings:
    """Settings as ``gpuwarden coordinator <flags>`` would build them (see
    :func:`coordinator_argv`)."""
    argv = coordinator_argv(
        tmp, broker_url=broker_url, kube=kube, flags=flags, identity=identity,
        state_dir=state_dir,
    )  # fmt: skip
    return parse_settings(argv, {})


def token_file(tmp: Path, token: str) -> Path:
    path = tmp / "api-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


# --- talking to a running coordinator ---------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    text: str


class Api:
    """The coordinator's HTTP API, as an operator's script would use it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base_url + path) as response,
        ):
            response.raise_for_status()
            return await response.json()

    async def post(
        self, path: str, body: Mapping[str, str] | None = None, *, token: str | None = None
    ) -> Reply:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.base_url + path, json=dict(body or {}), headers=headers) as response,
        ):
            return Reply(response.status, await response.text())

    async def node(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.get(f"/api/v1/nodes/{name}")
        return found

    async def lifecycle(self, name: str) -> str | None:
        """The node's lifecycle, or None while the coordinator does not know it."""
        nodes: list[dict[str, Any]] = (await self.get("/api/v1/nodes"))["nodes"]
        return next((str(n["lifecycle"]) for n in nodes if n["name"] == name), None)

    async def audit(self, node: str | None = None) -> list[dict[str, Any]]:
        """Audit entries, oldest first."""
        query = "?limit=10000" + ("" if node is None else f"&node={node}")
        entries: list[dict[str, Any]] = (await self.get("/api/v1/audit" + query))["entries"]
        return list(reversed(entries))

    async def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base_url + "/metrics") as response,
        ):
            text = await response.text()
        wanted = dict(labels or {})
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and wanted.items() <= sample.labels.items()
        )


@dataclass
class RunningCoordinator:
    settings: CoordinatorSettings
    api: Api
    task: asyncio.Task[None]
    stop_event: asyncio.Event

    async def stop(self) -> None:
        """Graceful: what SIGTERM does."""
        self.stop_event.set()
        await until_stopped(self.task, f"coordinator {self.settings.identity}")

    async def cancel(self) -> None:
        """Abrupt: the task is cancelled wherever it is, an actuator call in flight included."""
        self.task.cancel()
        await until_stopped(self.task, f"coordinator {self.settings.identity}")


async def until_stopped(task: asyncio.Task[Any], what: str) -> None:
    """Wait for a task told to stop. One still running after ``WAIT_S`` has lost its cancel
    (Python 3.11's ``asyncio.wait_for``, which aiomqtt and the Kubernetes layer use, can
    swallow one): cancel it again until it ends, so nothing outlives the test, and fail."""
    _, running = await asyncio.wait([task], timeout=WAIT_S)
    if not running:
        return
    while running:
        task.cancel()
        _, running = await asyncio.wait([task], timeout=0.5)
    raise AssertionError(f"{what} was still running {WAIT_S:g}s after being told to stop")


def _api_url(settings: CoordinatorSettings) -> str:
    assert settings.http is not None, "the harness always gives the coordinator --http"
    return f"http://{settings.http.host}:{settings.http.port}"


@contextlib.asynccontextmanager
async def running_coordinator(settings: CoordinatorSettings) -> AsyncIterator[RunningCoordinator]:
    """``coordinator.__main__.run`` in a task; ready once it leads and reads the broker."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop), name=f"coordinator-{settings.identity}")
    handle = RunningCoordinator(settings, Api(_api_url(settings)), task, stop)

    async def health() -> dict[str, Any]:
        if task.done():
            task.result()  # raise what stopped it
        try:
            body: dict[str, Any] = await handle.api.get("/healthz")
        except aiohttp.ClientError:
            return {}
        return body

    try:
        await eventually(
            health,
            lambda h: bool(h.get("leader") and h.get("broker_connected")),
            what=f"coordinator {settings.identity} leading and connected",
        )
        yield handle
    finally:
        if not task.done():
            stop.set()
            await until_stopped(task, f"coordinator {settings.identity}")
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


# --- a coordinator built by hand, for leader election -----------------------------------------

SHORT_LEASE = LeaseSettings(
    name="gpuwarden-coordinator",
    namespace=LEASE_NAMESPACE,
    lease_duration_s=2.0,
    renew_deadline_s=1.0,
    retry_period_s=0.2,
    request_timeout_s=0.5,
)


@dataclass(frozen=True)
class ActuatorCall:
    method: str
    node: str
    mark: NodeMark | None


class RecordingActuator:
    """Passes every call through to ``inner`` and remembers the writes, so a test can tell
    which of two coordinators acted."""

    def __init__(self, inner: Actuator) -> None:
        self.inner = inner
        self.name = inner.name
        self.writes: list[ActuatorCall] = []

    async def mark_unhealthy(self, node: str, mark: NodeMark, fact: MarkFact) -> ActionResult:
        self.writes.append(ActuatorCall("mark_unhealthy", node, mark))
        return await self.inner.mark_unhealthy(node, mark, fact)

    async def mark_healthy(self, node: str, fact: MarkFact) -> ActionResult:
        self.writes.append(ActuatorCall("mark_healthy", node, None))
        return await self.inner.mark_healthy(node, fact)

    async def node_facts(self, node: str) -> NodeFacts:
        return await self.inner.node_facts(node)

    async def list_marked(self) -> list[NodeFacts]:
        return await self.inner.list_marked()

    async def list_nodes(self) -> frozenset[str] | None:
        return await self.inner.list_nodes()

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class ElectedCoordinator:
    coordinator: Coordinator
    actuator: RecordingActuator
    elector: LeaderElector
    tasks: list[asyncio.Task[None]]

    @property
    def name(self) -> str:
        return self.coordinator.settings.identity

    async def crash(self) -> None:
        """Die without releasing the lease: the standby must wait it out."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            await until_stopped(task, task.get_name())


@contextlib.asynccontextmanager
async def elected_coordinator(
    settings: CoordinatorSettings, kube: FakeKube, lease: LeaseSettings = SHORT_LEASE
) -> AsyncIterator[ElectedCoordinator]:
    """A ``Coordinator`` on the fake API server whose leadership comes from a real
    ``LeaderElector``; not waited on: it may lead or stand by."""
    client = api_client_for_url(kube.url)
    actuator = RecordingActuator(
        KubeActuator(client, event_namespace=LEASE_NAMESPACE, close_client=True)
    )
    elector = LeaderElector(client, leader_identity(settings.identity), lease)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    audit = AuditLog(settings.state_dir / "audit.sqlite3")
    coordinator = Coordinator(settings, actuator=actuator, audit=audit, leadership=elector)
    tasks = [
        asyncio.create_task(elector.run(), name=f"elector-{settings.identity}"),
        asyncio.create_task(coordinator.run(), name=f"coordinator-{settings.identity}"),
    ]
    handle = ElectedCoordinator(coordinator, actuator, elector, tasks)
    try:
        await asyncio.wait_for(coordinator.ingestor.wait_connected(), WAIT_S)
        yield handle
    finally:
        await handle.crash()
        await actuator.close()
        audit.close()


# --- a light fleet of fake agents -------------------------------------------------------------


def new_boot_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class FakeAgent:
    """What one node's agent would say: its boot, its counter and its current health."""

    name: str
    gpu_count: int = 2
    boot_id: str = field(default_factory=new_boot_id)
    seq: int = 0
    health: Health = Health.HEALTHY
    action: Action = Action.NONE
    findings: tuple[Finding, ...] = ()
    faulty_gpu: int | None = None
    reporting: bool = True

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def status(self, status: Literal["online", "offline"]) -> StatusMessage:
        return StatusMessage(
            cluster=CLUSTER, node=self.name, seq=self.next_seq(), boot_id=self.boot_id,
            ts=time.time(), status=status,
        )  # fmt: skip

    def state(self) -> StateMessage:
        gpus = [
            GpuState(
                index=i, uuid=f"GPU-{self.name}-{i}", name="Fake H100",
                health=self.health if i == self.faulty_gpu else Health.HEALTHY,
                action=self.action if i == self.faulty_gpu else Action.NONE,
                utilization_gpu_pct=50.0, memory_used_bytes=1 << 30, memory_total_bytes=80 << 30,
            )
            for i in range(self.gpu_count)
        ]  # fmt: skip
        return StateMessage(
            cluster=CLUSTER, node=self.name, seq=self.next_seq(), boot_id=self.boot_id,
            ts=time.time(), interval_s=HEARTBEAT_S, instance_type="p5.48xlarge",
            driver_version="550.54.15", gpu_backend="sim", gpus_expected=self.gpu_count,
            health=self.health, action=self.action, gpus=gpus,
            host=HostState(hostname=self.name), findings=list(self.findings),
        )  # fmt: skip

    def xid_event(self, xid: int, gpu: int, action: Action) -> EventMessage:
        return EventMessage(
            cluster=CLUSTER, node=self.name, seq=self.next_seq(), boot_id=self.boot_id,
            ts=time.time(), kind=EventKind.XID, source="sim", gpu_index=gpu,
            code=f"XID-{xid}", xid=xid, severity=Severity.CRITICAL, action=action,
            message=f"Xid {xid} on GPU {gpu}",
        )  # fmt: skip


class Fleet:
    """Fake agents on one MQTT connection. Status and state go out retained, as a real
    agent's do; a heartbeat re-sends every reporting node's state."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.agents: dict[str, FakeAgent] = {}
        self.stopping = False

    def __getitem__(self, name: str) -> FakeAgent:
        return self.agents[name]

    async def join(self, *names: str) -> None:
        """Agents start: online, then a healthy state."""
        for name in names:
            agent = self.agents[name] = FakeAgent(name)
            await self._publish(agent, Kind.STATUS, encode(agent.status("online")), retain=True)
            await self.report(name)

    async def report(self, name: str) -> None:
        agent = self.agents[name]
        await self._publish(agent, Kind.STATE, encode(agent.state()), retain=True)

    async def fault(self, name: str, *, xid: int = 79, gpu: int = 0) -> None:
        """An XID that needs a reboot: the event at once, then the state that shows it."""
        agent = self.agents[name]
        action = Action.REBOOT
        agent.health, agent.action, agent.faulty_gpu = Health.UNHEALTHY, action, gpu
        agent.findings = (
            Finding(check="xid", severity=Severity.CRITICAL, code=f"XID-{xid}",
                    message=f"Xid {xid}", action=action, gpu_index=gpu),
        )  # fmt: skip
        await self._publish(agent, Kind.EVENTS, encode(agent.xid_event(xid, gpu, action)))
        await self.report(name)

    async def repair(self, name: str) -> None:
        """Healthy again on the same boot (someone fixed it without a reboot)."""
        agent = self.agents[name]
        agent.health, agent.action, agent.faulty_gpu, agent.findings = (
            Health.HEALTHY, Action.NONE, None, ()
        )  # fmt: skip
        await self.report(name)

    async def reboot(self, name: str) -> None:
        """The machine comes back on a new boot, healthy, and its agent starts over."""
        agent = self.agents[name] = FakeAgent(name)
        await self._publish(agent, Kind.STATUS, encode(agent.status("online")), retain=True)
        await self.report(name)

    async def go_silent(self, name: str) -> None:
        """The agent stops, and the broker speaks its will."""
        agent = self.agents[name]
        agent.reporting = False
        await self._publish(agent, Kind.STATUS, encode(agent.status("offline")), retain=True)

    async def publish_raw(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)

    async def heartbeat(self) -> None:
        # the flag, not only the cancel: aiomqtt's publish can swallow a cancel (see
        # until_stopped)
        while not self.stopping:
            await asyncio.sleep(HEARTBEAT_S)
            for name, agent in list(self.agents.items()):
                if agent.reporting:
                    await self.report(name)

    async def _publish(
        self, agent: FakeAgent, kind: Kind, payload: bytes, *, retain: bool = False
    ) -> None:
        await self.client.publish(node_topic(CLUSTER, agent.name, kind), payload, qos=1,
                                  retain=retain)  # fmt: skip


@contextlib.asynccontextmanager
async def fleet(port: int) -> AsyncIterator[Fleet]:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"fleet-{uuid.uuid4().hex[:8]}") as c:
        agents = Fleet(c)
        beat = asyncio.create_task(agents.heartbeat(), name="fleet-heartbeat")
        try:
            yield agents
        finally:
            agents.stopping = True
            beat.cancel()
            await asyncio.wait([beat], timeout=WAIT_S)


async def retained(port: int, topic: str, *, wait_s: float = 0.5) -> Any:
    """The retained message on ``topic`` as a fresh subscriber gets it (decoded JSON), or None
    when the broker keeps none."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"peek-{uuid.uuid4().hex[:8]}") as c:
        await c.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for message in c.messages:
                    if message.retain and isinstance(message.payload, bytes):
                        return json.loads(message.payload)
    return None


def add_nodes(kube: FakeKube, *names: str, ready: bool = True) -> None:
    for name in names:
        kube.add_node(name, labels={"node.kubernetes.io/instance-type": "p5.48xlarge"},
                      ready=ready)  # fmt: skip


# --- an alert webhook ------------------------------------------------------------------------


@dataclass
class AlertReceiver:
    url: str
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def keyed(self, key: str) -> list[dict[str, Any]]:
        """Slack-shaped alerts whose ``key`` field is ``key``."""
        return [a for a in self.alerts if _slack_field(a, "key") == key]


def _slack_field(alert: Mapping[str, Any], title: str) -> str | None:
    for attachment in alert.get("attachments", []):
        for item in attachment.get("fields", []):
            if item.get("title") == title:
                return str(item.get("value"))
    return None


@contextlib.asynccontextmanager
async def alert_receiver() -> AsyncIterator[AlertReceiver]:
    """A Slack-compatible webhook on a free port that keeps every JSON body posted to it."""
    port = free_port()
    receiver = AlertReceiver(url=f"http://127.0.0.1:{port}/hooks/gpuwarden")

    async def hook(request: web.Request) -> web.Response:
        receiver.alerts.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/gpuwarden", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()
