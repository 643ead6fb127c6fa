"""XIDs: the driver's fault reports, classified by the XID table, escalated by history."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.debounce import StickyFindings, require_positive
from agent.sample import NodeSample, XidEvent
from agent.xid_table import XidHistory, XidRule, XidTable
from gpuwarden_common.health import Action, Finding, Severity

_MAX_TEXT = 300


@dataclass(frozen=True)
class XidConfig:
    # how long a non-sticky XID (an application fault) keeps its GPU degraded after it was
    # last seen: long enough for the coordinator and the job to notice it
    transient_hold_s: float = 300.0

    def __post_init__(self) -> None:
        require_positive(transient_hold_s=self.transient_hold_s)


class XidCheck:
    name = "xid"

    def __init__(
        self, table: XidTable, history: XidHistory, config: XidConfig | None = None
    ) -> None:
        self._table = table
        self._history = history
        self._config = config or XidConfig()
        self._sticky = StickyFindings()
        # (gpu_index, code) -> (finding, sample ts it was last seen at)
        self._transient: dict[tuple[int | None, str], tuple[Finding, float]] = {}

    def is_supported(self, sample: NodeSample) -> bool:
        return True

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        for event in sample.xids:
            rule = self._table.rule(event.xid)
            if rule.severity is Severity.OK:
                continue
            finding = self._finding(rule, event, sample)
            if rule.sticky:
                self._sticky.add(finding)
            else:
                self._transient[(finding.gpu_index, finding.code)] = (finding, sample.ts)
        # a sample's ts, not the event's: kernel-log times may be boot-relative or skewed
        hold = self._config.transient_hold_s
        self._transient = {
            key: (finding, seen)
            for key, (finding, seen) in self._transient.items()
            if sample.ts - seen < hold
        }
        return self._sticky.findings() + tuple(f for f, _ in self._transient.values())

    def _finding(self, rule: XidRule, event: XidEvent, sample: NodeSample) -> Finding:
        where = _where(event)
        message = f"XID {event.xid}: {rule.description} ({where}, via {event.source})"
        if event.text:
            message += f": {event.text[:_MAX_TEXT]}"
        severity, action = rule.severity, rule.action
        gpu_uuid = _uuid_of(event, sample)
        if rule.reboot_class and gpu_uuid is not None:
            escalation = self._table.escalation
            faults = self._history.record(gpu_uuid, event.xid, sample.ts, escalation.window_s)
            if faults >= escalation.reboot_faults_before_replace:
                days = escalation.window_s / 86400
                severity, action = Severity.CRITICAL, Action.REPLACE
                message += (
                    f"; reboot-class fault on {faults} boots of {gpu_uuid} within"
                    f" {days:g} days: replace"
                )
        return Finding(
            check=self.name,
            severity=severity,
            code=f"XID-{event.xid}",
            message=message[:1024],
            action=action,
            gpu_index=event.gpu_index,
        )


def _where(event: XidEvent) -> str:
    if event.gpu_index is not None:
        return f"GPU {event.gpu_index}"
    if event.pci_bus_id:
        return f"PCI {event.pci_bus_id}, no known GPU"
    return "unknown GPU"


def _uuid_of(event: XidEvent, sample: NodeSample) -> str | None:
    if event.gpu_uuid:
        return event.gpu_uuid
    if event.gpu_index is None:
        return None
    gpu = sample.gpu(event.gpu_index)
    return gpu.uuid if gpu is not None and gpu.uuid else None
