"""The work on one GPU in one pass: its processes, who they work for, and how busy it was.

The NVML reads (running processes, utilization samples, per-process utilization) go through
the collector's pass (:class:`agent.nvml_usage.NvmlReads`), so the error rules are the
collector's: an unsupported call is remembered and not made again, a lost GPU ends the pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from agent.nvml_usage import NoSamples, NvmlReads, UsageReader, Utilization
from agent.owners import group_owners
from agent.proc_owners import ProcessTable
from gpuwarden_common.wire import Attribution, GpuOwner, GpuProcess, UtilizationSource

MAX_PROCESSES: Final = 1024  # the wire's limit per GPU

# (what, the binding's name, the older name to try where the binding's _v3 is missing)
_PROCESS_LISTS: Final = (
    ("processes", "nvmlDeviceGetComputeRunningProcesses",
     "nvmlDeviceGetComputeRunningProcesses_v2"),
    ("graphics_processes", "nvmlDeviceGetGraphicsRunningProcesses",
     "nvmlDeviceGetGraphicsRunningProcesses_v2"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GpuWork:
    utilization: Utilization
    processes: list[GpuProcess]
    owners: list[GpuOwner]


class GpuWorkReader:
    """Per collector: the usage timestamps per GPU and the table of known processes."""

    def __init__(self, table: ProcessTable) -> None:
        self._table = table
        self._usage = UsageReader()

    @property
    def attribution(self) -> Attribution | None:
        return self._table.attribution

    def read(self, read: NvmlReads) -> GpuWork:
        utilization = self._usage.utilization(read)
        listed = self._listed(read)
        uses = self._usage.processes(read) if listed else None
        if isinstance(uses, NoSamples):
            # NVML has no per-process entry since the previous read: every process was idle
            # if the GPU's own samples covered that time, else the reads were too close
            # together to tell
            covered = utilization.source is UtilizationSource.SAMPLES
            uses = {} if covered else None
        processes: list[GpuProcess] = []
        attributed = []
        for pid, used in listed:
            facts = self._table.facts(pid)
            process = GpuProcess(pid=pid, used_memory_bytes=used, name=facts.name)
            processes.append(process)
            attributed.append((process, facts.workload))
        return GpuWork(utilization, processes, group_owners(attributed, uses))

    def end_pass(self) -> None:
        """After every GPU is read: processes no GPU showed this pass are forgotten."""
        self._table.end_pass()

    @staticmethod
    def _listed(read: NvmlReads) -> list[tuple[int, int | None]]:
        """(pid, used bytes) of compute and graphics processes, each pid once (a process
        with both kinds of context is in both lists)."""
        found: dict[int, int | None] = {}
        for what, function, older in _PROCESS_LISTS:
            for p in _process_list(read, what, function, older):
                pid = int(p.pid)
                used = getattr(p, "usedGpuMemory", None)
                if pid not in found or found[pid] is None:
                    found[pid] = None if used is None else int(used)
        return list(found.items())[:MAX_PROCESSES]


def _process_list(read: NvmlReads, what: str, function: str, older: str) -> Sequence[Any]:
    found: Sequence[Any] | None = read.call(what, function)
    if found is None and read.unsupported(what):
        # the binding maps the plain name to _v3, which older drivers lack
        found = read.call(f"{what}_v2", older)
    return found or ()
