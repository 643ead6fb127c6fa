"""A node's current findings as the coordinator tracks them: what, on which GPU, since when,
how many times. Pure: the model feeds it agent reports, the lifecycle and the views read it.

An agent's state report is its full word on what is wrong *now*, but it carries no history:
every report repeats the same XID finding. The coordinator therefore keys findings by
``(gpu_index, code)`` and remembers, across reports, when each was first seen (on the
coordinator's clock) and how many times it occurred: a fault event counts one occurrence, and
a finding that shows up in a report without an event before it counts one too. A finding
missing from the next report is gone (the fault cleared, or the node rebooted).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from gpuwarden_common.health import Action, Finding, Severity, action_rank

FindingKey = tuple[int | None, str]


@dataclass(frozen=True, slots=True)
class SeenFinding:
    """One current finding of a node, with its history on this coordinator."""

    code: str
    gpu_index: int | None  # None: the host
    check: str
    severity: Severity
    action: Action
    message: str
    first_seen: float
    count: int = 1
    unknown: bool = False

    @property
    def key(self) -> FindingKey:
        return (self.gpu_index, self.code)


def after_report(
    seen: Iterable[SeenFinding], findings: Iterable[Finding], now: float
) -> tuple[SeenFinding, ...]:
    """The findings after a state report: the report's non-ok findings, each keeping the
    first-seen time and count it already had."""
    before = {f.key: f for f in seen}
    current: dict[FindingKey, SeenFinding] = {}
    for f in findings:
        if f.severity is Severity.OK:
            continue
        key = (f.gpu_index, f.code)
        known = before.get(key) or current.get(key)
        current[key] = SeenFinding(
            code=f.code, gpu_index=f.gpu_index, check=f.check, severity=f.severity,
            action=f.action, message=f.message, unknown=f.unknown,
            first_seen=known.first_seen if known else now, count=known.count if known else 1,
        )
    return _ordered(current)


def after_event(
    seen: Iterable[SeenFinding],
    *,
    code: str,
    gpu_index: int | None,
    check: str,
    severity: Severity,
    action: Action,
    message: str,
    now: float,
) -> tuple[SeenFinding, ...]:
    """The findings after a fault event: one more occurrence of ``(gpu_index, code)``."""
    current = {f.key: f for f in seen}
    known = current.get((gpu_index, code))
    if known is None:
        current[(gpu_index, code)] = SeenFinding(
            code=code, gpu_index=gpu_index, check=check, severity=severity, action=action,
            message=message, first_seen=now,
        )
    else:
        current[known.key] = replace(known, count=known.count + 1)
    return _ordered(current)


def _ordered(found: Mapping[FindingKey, SeenFinding]) -> tuple[SeenFinding, ...]:
    # GPUs in index order, the host last: the order an operator reads a node's story in
    return tuple(sorted(found.values(), key=lambda f: (
        f.gpu_index is None, f.gpu_index or 0, f.first_seen, f.code,
    )))


def clock_text(ts: float) -> str:
    """``14:02 UTC``: the time of day a fault started, for one-line reasons."""
    return time.strftime("%H:%M UTC", time.gmtime(ts))


def describe(finding: SeenFinding) -> str:
    """``XID 79 on GPU 2 at 14:02 UTC`` (``, 3 times`` when it repeated)."""
    code = finding.code
    if code.startswith("XID-"):
        code = f"XID {code.removeprefix('XID-')}"
    where = "the host" if finding.gpu_index is None else f"GPU {finding.gpu_index}"
    repeats = f", {finding.count} times" if finding.count > 1 else ""
    return f"{code} on {where} at {clock_text(finding.first_seen)}{repeats}"


def fault_summary(seen: Iterable[SeenFinding]) -> str | None:
    """The node's reason in one line: the critical finding that calls for the strongest
    action (the earliest among equals), and how many others there are; None when no finding
    is critical."""
    faults = sorted(
        (f for f in seen if f.severity is Severity.CRITICAL),
        key=lambda f: (-action_rank(f.action), f.first_seen),
    )
    if not faults:
        return None
    head = describe(faults[0])
    others = len(faults) - 1
    if others:
        head += f" and {others} other fault{'s' * (others != 1)}"
    return head
