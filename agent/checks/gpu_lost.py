"""GPUs the node can no longer reach: lost to NVML, fallen off the bus, missing altogether, or
unreadable because the whole collection pass failed."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.debounce import StickyFindings
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity


@dataclass(frozen=True)
class GpuLostConfig:
    # a GPU gone from the bus is back only after a power cycle of the slot: reboot, and the
    # XID history escalates repeats to replace
    lost_action: Action = Action.REBOOT
    bus_fault_action: Action = Action.REBOOT
    count_low_action: Action = Action.REBOOT


class GpuLostCheck:
    """Lost, fallen off the bus and missing are hard faults: they count at once and stay for
    the life of the agent. An unreadable pass is reported for that sample only."""

    name = "gpu_lost"

    def __init__(self, config: GpuLostConfig | None = None) -> None:
        self._config = config or GpuLostConfig()
        self._sticky = StickyFindings()

    def is_supported(self, sample: NodeSample) -> bool:
        return True

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        for gpu in sample.gpus:
            if gpu.lost:
                self._lost(gpu.index, f"GPU {gpu.index} ({gpu.uuid}) is lost to NVML")
        unreadable: list[Finding] = []
        for error in sample.errors:
            if error.lost:
                who = "a GPU" if error.gpu_index is None else f"GPU {error.gpu_index}"
                self._lost(error.gpu_index, f"{who} is lost: {error.what}: {error.error}")
            elif error.gpu_index is None:
                # the whole pass failed (NVML hung, no device count): this sample's GPUs
                # carry no readings, so nobody can vouch for them; it passes with the error
                unreadable.append(
                    Finding(
                        check=self.name,
                        severity=Severity.WARNING,
                        code="GPU-UNREADABLE",
                        message=f"GPUs could not be read: {error.what}: {error.error}"[:1024],
                        unknown=True,
                    )
                )
        for fault in sample.bus_faults:
            where = fault.pci_bus_id or "unknown PCI address"
            self._sticky.add(
                Finding(
                    check=self.name,
                    severity=Severity.CRITICAL,
                    code="GPU-FELL-OFF-BUS",
                    message=f"GPU at {where} has fallen off the bus: {fault.text}"[:1024],
                    action=self._config.bus_fault_action,
                    gpu_index=fault.gpu_index,
                )
            )
        expected = sample.gpus_expected
        if expected is not None and len(sample.gpus) < expected:
            self._sticky.add(
                Finding(
                    check=self.name,
                    severity=Severity.CRITICAL,
                    code="GPU-COUNT-LOW",
                    message=f"{len(sample.gpus)} of {expected} expected GPUs are visible",
                    action=self._config.count_low_action,
                )
            )
        return self._sticky.findings() + tuple(unreadable)

    def _lost(self, gpu_index: int | None, message: str) -> None:
        if self._sticky.has(gpu_index, "GPU-LOST"):
            return
        self._sticky.add(
            Finding(
                check=self.name,
                severity=Severity.CRITICAL,
                code="GPU-LOST",
                message=message[:1024],
                action=self._config.lost_action,
                gpu_index=gpu_index,
            )
        )
