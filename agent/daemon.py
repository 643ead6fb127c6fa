"""The agent's main loop: sample, check, decide, publish; faults go out the moment they are
caught.

Threads: NVML calls (collection, the XID event wait) and the kernel-log follower block, so they
run off the event loop; faults they catch come back through ``call_soon_threadsafe``. A
collection that hangs past its deadline is reported (every GPU ``unknown``) and not stacked:
the next pass waits until the hung call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.checks import default_checks
from agent.checks.runner import CheckRunner
from agent.host import collect_host
from agent.kmsg import KmsgFollower
from agent.metrics import AgentMetrics
from agent.nvml_collector import GpuCollector
from agent.proc_owners import ProcDir, ProcSource
from agent.publisher import Publisher, Stamp
from agent.sample import BusFault, CollectError, NodeSample, XidEvent
from agent.settings import AgentSettings
from agent.verdict import Verdict, apply_verdict
from agent.xid_events import XidEventWatcher
from agent.xid_table import XidHistory, XidTable
from gpuwarden_common import logs
from gpuwarden_common.health import Action, Finding, Health, Severity, severity_of_health
from gpuwarden_common.wire import (
    EventKind,
    EventMessage,
    GpuState,
    StateMessage,
    encode,
)

log = structlog.get_logger("agent")

# The same XID often arrives twice, from the NVML event and the kernel log, within ms.
_XID_DEDUPE_S = 5.0
# Findings whose appearance is itself a fault event (XIDs are sent when caught, not here).
_EVENT_CODES: dict[str, EventKind] = {
    "ECC-DBE": EventKind.ECC,
    "REMAP-FAILURE": EventKind.ECC,
    "REMAP-PENDING": EventKind.ECC,
    "RETIRED-PAGES-PENDING": EventKind.ECC,
    "GPU-LOST": EventKind.GPU_LOST,
    "GPU-FELL-OFF-BUS": EventKind.GPU_LOST,
    "GPU-COUNT-LOW": EventKind.GPU_LOST,
}


@dataclass(frozen=True)
class CollectDeadline:
    collect_s: float = 20.0


def proc_source(settings: AgentSettings, nvml: Any) -> ProcSource | None:
    """Where GPU processes' cgroups are read: ``--proc-root``; None when off. A simulated
    node's /proc is the simulator's own (its processes exist nowhere else), unless
    ``--proc-root`` names another tree (the benchmarks give it cgroup files on disk)."""
    if settings.proc_root is None:
        return None
    if settings.gpu_backend == "sim" and settings.proc_root == Path("/proc"):
        from agent.sim.fake_proc import FakeProc  # noqa: PLC0415 - the sim backend only

        simulated = getattr(nvml, "proc", None)
        if isinstance(simulated, FakeProc):
            return simulated
    return ProcDir(settings.proc_root)


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        nvml: Any,
        *,
        boot_id: str,
        metrics: AgentMetrics | None = None,
        deadline: CollectDeadline = CollectDeadline(),
    ) -> None:
        self.settings = settings
        self.metrics = metrics or AgentMetrics()
        self.stamp = Stamp(settings.cluster, settings.node, boot_id)
        self.collector = GpuCollector(
            nvml, expected_gpus=settings.expected_gpus, proc=proc_source(settings, nvml)
        )
        self._nvml = nvml
        self._deadline = deadline
        self._table = XidTable.load(settings.xid_table)
        self._runner = CheckRunner(
            default_checks(self._table, XidHistory(settings.xid_history, boot_id=boot_id))
        )
        self.publisher: Publisher | None = None
        self._pending_xids: list[XidEvent] = []
        self._pending_bus: list[BusFault] = []
        self._recent_xids: dict[tuple[int | None, int], float] = {}
        self._wake = asyncio.Event()
        self._collecting: asyncio.Future[Any] | None = None
        self._watcher: XidEventWatcher | None = None
        self._kmsg: KmsgFollower | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Verdict | None = None
        self._sent_fault_codes: set[tuple[int | None, str]] = set()
        self.last_sample_ts = 0.0
        self.last_state: StateMessage | None = None

    # --- start and stop -----------------------------------------------------------------
    async def start_nvml(self) -> None:
        """Initialise NVML off the loop; raises NvmlUnavailable with one clear line."""
        # the node names the lines NVML start-up logs, whoever starts this agent
        with structlog.contextvars.bound_contextvars(node=self.settings.node):
            await asyncio.wait_for(
                asyncio.to_thread(self.collector.start), self._deadline.collect_s
            )

    def start_watchers(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._watcher = XidEventWatcher(
            self._nvml,
            on_xid=self._threadsafe(self._on_xid),
            on_lost=self._threadsafe(self._on_lost),
            source="sim" if self.settings.gpu_backend == "sim" else "nvml",
        )
        self._watcher.start()
        if self.settings.kmsg_path is not None:
            self._kmsg = KmsgFollower(
                self._threadsafe(self._on_kernel_fault),
                self.collector.index_for_pci,
                str(self.settings.kmsg_path),
            )
            self._kmsg.start()

    def stop_watchers(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self._kmsg is not None:
            self._kmsg.stop()

    def _threadsafe(self, fn: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(fn, *args)

        return call

    # --- faults, on the loop --------------------------------------------------------------
    def _on_xid(self, event: XidEvent) -> None:
        key = (event.gpu_index, event.xid)
        now = time.time()
        last = self._recent_xids.get(key)
        self._recent_xids[key] = now
        if last is not None and now - last < _XID_DEDUPE_S:
            return
        rule = self._table.rule(event.xid)
        self.metrics.xid_total.labels(
            "" if event.gpu_index is None else str(event.gpu_index), str(event.xid), event.source
        ).inc()
        gpu = self._gpu(event.gpu_index)
        self._send_event(
            kind=EventKind.XID,
            source=event.source,
            gpu_index=event.gpu_index,
            gpu_uuid=event.gpu_uuid or (gpu.uuid if gpu else None),
            pci_bus_id=event.pci_bus_id or (gpu.pci_bus_id if gpu else None),
            code=f"XID-{event.xid}",
            xid=event.xid,
            severity=rule.severity,
            action=rule.action,
            message=f"XID {event.xid}: {rule.description}",
            observed_ts=event.ts,
        )
        self._pending_xids.append(event)
        self._wake.set()

    def _on_lost(self, gpu_index: int | None, error: str) -> None:
        self._fault_once(
            gpu_index,
            "GPU-LOST",
            EventKind.GPU_LOST,
            "nvml",
            f"GPU {gpu_index} is lost: {error}",
        )
        self._wake.set()

    def _on_kernel_fault(self, fault: XidEvent | BusFault) -> None:
        if isinstance(fault, XidEvent):
            self._on_xid(fault)
            return
        self._pending_bus.append(fault)
        self._fault_once(
            fault.gpu_index,
            "GPU-FELL-OFF-BUS",
            EventKind.GPU_LOST,
            "kmsg",
            f"GPU at {fault.pci_bus_id} has fallen off the bus",
        )
        self._wake.set()

    def _fault_once(
        self,
        gpu_index: int | None,
        code: str,
        kind: EventKind,
        source: str,
        message: str,
    ) -> None:
        if (gpu_index, code) in self._sent_fault_codes:
            return
        self._sent_fault_codes.add((gpu_index, code))
        gpu = self._gpu(gpu_index)
        self._send_event(
            kind=kind,
            source=source,
            gpu_index=gpu_index,
            gpu_uuid=gpu.uuid if gpu else None,
            pci_bus_id=gpu.pci_bus_id if gpu else None,
            code=code,
            severity=Severity.CRITICAL,
            action=Action.REBOOT,
            message=message,
            observed_ts=time.time(),
        )

    def _gpu(self, index: int | None) -> GpuState | None:
        if index is None or self.last_state is None:
            return None
        return next((g for g in self.last_state.gpus if g.index == index), None)

    def _send_event(self, **fields: Any) -> None:
        msg = EventMessage(**self.stamp.next(), **fields)
        what = "GPU health changed" if msg.kind is EventKind.HEALTH_CHANGE else "fault"
        log.log(
            logs.level_of(msg.severity), what,
            kind=msg.kind.value, code=msg.code, gpu=msg.gpu_index, message=msg.message,
            event_id=msg.event_id,
        )  # fmt: skip
        if self.publisher is not None:
            self.publisher.publish_event(encode(msg))

    # --- sampling -------------------------------------------------------------------------
    async def sample(self) -> tuple[StateMessage, Verdict]:
        started = time.perf_counter()
        gpus, errors = await self._collect()
        host = await asyncio.to_thread(collect_host, self.settings.disk_path)
        xids, self._pending_xids = tuple(self._pending_xids), []
        bus, self._pending_bus = tuple(self._pending_bus), []
        sample = NodeSample(
            ts=time.time(),
            gpus=gpus,
            host=host,
            gpus_expected=self.collector.expected_gpus,
            driver_version=self.collector.driver_version,
            errors=errors,
            xids=xids,
            bus_faults=bus,
            collect_s=time.perf_counter() - started,
        )
        self.metrics.collect_duration.observe(sample.collect_s)
        results = await asyncio.to_thread(self._runner.run, sample)
        self.metrics.observe_checks(results)
        verdict = apply_verdict(sample, results)
        state = StateMessage(
            **self.stamp.next(),
            interval_s=self.settings.interval_s,
            instance_type=self.settings.instance_type,
            driver_version=sample.driver_version,
            gpu_backend="sim" if self.settings.gpu_backend == "sim" else "nvml",
            gpus_expected=sample.gpus_expected,
            health=verdict.health,
            action=verdict.action,
            gpus=list(verdict.gpus),
            host=host,
            findings=list(verdict.findings),
            attribution=self.collector.attribution,
        )
        self.metrics.observe_gpus(state.gpus, state.health)
        self.last_sample_ts = sample.ts
        return state, verdict

    async def _collect(self) -> tuple[tuple[GpuState, ...], tuple[CollectError, ...]]:
        if self._collecting is not None and not self._collecting.done():
            # the previous call is still stuck inside the driver: do not pile up threads
            return self._unknown_gpus("NVML call still hung from the previous pass")
        self._collecting = asyncio.ensure_future(asyncio.to_thread(self.collector.collect))
        try:
            result: tuple[tuple[GpuState, ...], tuple[CollectError, ...]] = await asyncio.wait_for(
                asyncio.shield(self._collecting), self._deadline.collect_s
            )
            return result
        except TimeoutError:
            log.error("NVML collection hung", deadline_s=self._deadline.collect_s)
            return self._unknown_gpus(f"NVML collection exceeded {self._deadline.collect_s}s")

    def _unknown_gpus(self, why: str) -> tuple[tuple[GpuState, ...], tuple[CollectError, ...]]:
        previous = self.last_state.gpus if self.last_state else []
        gpus = tuple(
            GpuState(index=g.index, uuid=g.uuid, name=g.name, pci_bus_id=g.pci_bus_id)
            for g in previous
        )
        return gpus, (CollectError(gpu_index=None, what="collect", error=why),)

    def _events_for_changes(self, verdict: Verdict) -> None:
        """Health changes and newly appeared hard faults become events."""
        before = self._previous
        seen_before = {(f.gpu_index, f.code) for f in before.findings} if before else set()
        for f in verdict.findings:
            kind = _EVENT_CODES.get(f.code)
            if kind is not None and (f.gpu_index, f.code) not in seen_before:
                self._finding_event(f, kind)
        old = {g.index: g.health for g in before.gpus} if before else {}
        for g in verdict.gpus:
            was = old.get(g.index, Health.HEALTHY if before is None else Health.UNKNOWN)
            if g.health != was and not (before is None and g.health is Health.HEALTHY):
                self._send_event(
                    kind=EventKind.HEALTH_CHANGE,
                    source="poll",
                    gpu_index=g.index,
                    gpu_uuid=g.uuid,
                    pci_bus_id=g.pci_bus_id,
                    code="HEALTH-CHANGE",
                    severity=severity_of_health(g.health),
                    action=g.action,
                    message=f"GPU {g.index} {was.value} -> {g.health.value}",
                    health_from=was,
                    health_to=g.health,
                    observed_ts=time.time(),
                )

    def _finding_event(self, f: Finding, kind: EventKind) -> None:
        if (f.gpu_index, f.code) in self._sent_fault_codes:
            return  # already sent when the watcher or kernel log caught it
        self._sent_fault_codes.add((f.gpu_index, f.code))
        gpu = self._gpu(f.gpu_index)
        self._send_event(
            kind=kind,
            source="poll",
            gpu_index=f.gpu_index,
            gpu_uuid=gpu.uuid if gpu else None,
            pci_bus_id=gpu.pci_bus_id if gpu else None,
            code=f.code,
            severity=f.severity,
            action=f.action,
            message=f.message,
            observed_ts=time.time(),
        )

    # --- the loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        next_publish = 0.0
        while not stop.is_set():
            self._wake.clear()
            state, verdict = await self.sample()
            changed = self._previous is None or verdict.changed_from(self._previous)
            self._events_for_changes(verdict)
            self._previous = verdict
            self.last_state = state
            now = time.monotonic()
            if self.publisher is not None and (changed or now >= next_publish):
                self.publisher.publish_state(encode(state))
                next_publish = now + self.settings.interval_s
                if changed:
                    log.log(logs.level_of(severity_of_health(state.health)), "node health",
                            health=state.health.value, action=state.action.value)  # fmt: skip
            if self.publisher is not None:
                self.metrics.spool_depth.set(self.publisher.spool_depth())
                self.metrics.spool_dropped.set(self.publisher.spool_dropped())
            with contextlib.suppress(TimeoutError):
                waiters = {
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                }
                try:
                    await asyncio.wait(
                        waiters,
                        timeout=max(0.0, next_publish - now),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for w in waiters:
                        w.cancel()

