"""Memory repair state: row remapping (Ampere and later) or retired pages (older GPUs)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.debounce import Latch, StickyFindings, require_positive
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity
from gpuwarden_common.wire import GpuState


@dataclass(frozen=True)
class RemapConfig:
    # NVIDIA's dynamic page retirement guidance: a board with this many retired pages is due
    # for replacement (the driver can retire at most 64)
    retired_pages_replace_at: int = 60
    # pending flags only clear with a reset; a couple of clean polls guard against a bad read
    clear_after_polls: int = 2

    def __post_init__(self) -> None:
        require_positive(
            retired_pages_replace_at=self.retired_pages_replace_at,
            clear_after_polls=self.clear_after_polls,
        )


class RemapCheck:
    name = "remap"

    def __init__(self, config: RemapConfig | None = None) -> None:
        self._config = config or RemapConfig()
        self._sticky = StickyFindings()
        self._pending = Latch(1, self._config.clear_after_polls)

    def is_supported(self, sample: NodeSample) -> bool:
        # a kept fault must outlive the readings: a GPU that later reads nothing is still bad
        return bool(self._sticky) or any(
            g.row_remap is not None or g.retired_pages is not None for g in sample.gpus
        )

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        pending: list[Finding] = []
        for gpu in sample.gpus:
            if gpu.lost:
                continue
            self._hard_faults(gpu)
            finding = self._pending_finding(gpu)
            if finding is not None:
                pending.append(finding)
        return self._sticky.findings() + tuple(pending)

    def _hard_faults(self, gpu: GpuState) -> None:
        remap, pages = gpu.row_remap, gpu.retired_pages
        if remap is not None and remap.failure:
            self._sticky.add(
                Finding(
                    check=self.name,
                    severity=Severity.CRITICAL,
                    code="REMAP-FAILURE",
                    message=(
                        f"GPU {gpu.index} row remapping failed: no spare rows left"
                        f" ({remap.uncorrectable} rows remapped for uncorrectable errors)"
                    ),
                    action=Action.REPLACE,
                    gpu_index=gpu.index,
                )
            )
        if pages is not None:
            retired = pages.single_bit + pages.double_bit
            if retired >= self._config.retired_pages_replace_at:
                self._sticky.add(
                    Finding(
                        check=self.name,
                        severity=Severity.CRITICAL,
                        code="RETIRED-PAGES-LIMIT",
                        message=(
                            f"GPU {gpu.index} has {retired} retired memory pages"
                            f" (limit {self._config.retired_pages_replace_at})"
                        ),
                        action=Action.REPLACE,
                        gpu_index=gpu.index,
                    )
                )

    def _pending_finding(self, gpu: GpuState) -> Finding | None:
        remap, pages = gpu.row_remap, gpu.retired_pages
        remap_pending = remap is not None and remap.pending
        pages_pending = pages is not None and pages.pending
        if not self._pending.update(gpu.index, remap_pending or pages_pending):
            return None
        if remap is not None:
            code = "REMAP-PENDING"
            message = f"GPU {gpu.index} has a row remap pending: reset the GPU to apply it"
        else:
            code = "RETIRED-PAGES-PENDING"
            message = f"GPU {gpu.index} has page retirements pending: reset the GPU to apply them"
        return Finding(
            check=self.name,
            severity=Severity.WARNING,
            code=code,
            message=message,
            action=Action.RESET_GPU,
            gpu_index=gpu.index,
        )
