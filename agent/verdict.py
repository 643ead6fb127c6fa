"""The node verdict: folds the checks' findings into per-GPU and node health. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from agent.checks.base import CheckResult
from agent.sample import NodeSample
from gpuwarden_common.health import (
    Action,
    Finding,
    Health,
    strongest_action,
    summarize,
    worst_health,
)
from gpuwarden_common.wire import GpuState

# A lost GPU may come without a finding (its check disabled or itself failed): it still
# cannot serve, and only a reboot brings a GPU back onto the bus.
LOST_GPU_ACTION = Action.REBOOT


@dataclass(frozen=True)
class Verdict:
    gpus: tuple[GpuState, ...]
    # findings about the node as a whole, or about a GPU the sample does not list
    node_findings: tuple[Finding, ...]
    health: Health
    action: Action
    findings: tuple[Finding, ...]

    def changed_from(self, previous: Verdict | None) -> bool:
        """Whether the node's or any GPU's health or action differs (publish at once then)."""
        if previous is None:
            return True
        if (self.health, self.action) != (previous.health, previous.action):
            return True
        return _gpu_states(self.gpus) != _gpu_states(previous.gpus)


def apply_verdict(sample: NodeSample, results: Iterable[CheckResult]) -> Verdict:
    findings = tuple(f for result in results for f in result.findings)
    by_gpu: dict[int, list[Finding]] = {gpu.index: [] for gpu in sample.gpus}
    node_findings: list[Finding] = []
    for finding in findings:
        if finding.gpu_index is not None and finding.gpu_index in by_gpu:
            by_gpu[finding.gpu_index].append(finding)
        else:
            node_findings.append(finding)

    gpus = tuple(_judge(gpu, by_gpu[gpu.index]) for gpu in sample.gpus)
    node_health, node_action = summarize(node_findings)
    return Verdict(
        gpus=gpus,
        node_findings=tuple(node_findings),
        health=worst_health([node_health, *(g.health for g in gpus)]),
        action=strongest_action([node_action, *(g.action for g in gpus)]),
        findings=findings,
    )


def _judge(gpu: GpuState, findings: list[Finding]) -> GpuState:
    health, action = summarize(findings)
    if gpu.lost:
        health = Health.UNHEALTHY
        action = strongest_action([action, LOST_GPU_ACTION])
    if (health, action) == (gpu.health, gpu.action):
        return gpu
    return msgspec.structs.replace(gpu, health=health, action=action)


def _gpu_states(gpus: tuple[GpuState, ...]) -> dict[int, tuple[Health, Action]]:
    return {gpu.index: (gpu.health, gpu.action) for gpu in gpus}
