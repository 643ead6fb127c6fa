"""A GPU's processes grouped by the workload they belong to: the ``owners`` of a GpuState.

Pure: the processes, what each one works for, and (where NVML gives them) per-process
utilization in; one :class:`GpuOwner` per workload out, figures summed over its processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.attribution import Workload
from agent.nvml_usage import ProcessUse
from gpuwarden_common.wire import GpuOwner, GpuProcess


def group_owners(
    processes: Sequence[tuple[GpuProcess, Workload]],
    uses: Mapping[int, ProcessUse] | None,
) -> list[GpuOwner]:
    """``uses`` None: no per-process utilization on this GPU (the owners' figures stay None);
    a pid missing from ``uses`` did not use the GPU since the previous read (0)."""
    groups: dict[Workload, list[GpuProcess]] = {}
    for process, workload in processes:
        groups.setdefault(workload, []).append(process)
    owners = [_owner(workload, members, uses) for workload, members in groups.items()]
    # a stable order, whatever order NVML listed the processes in
    return sorted(owners, key=_order)


def _owner(
    workload: Workload, members: list[GpuProcess], uses: Mapping[int, ProcessUse] | None
) -> GpuOwner:
    memory = [p.used_memory_bytes for p in members if p.used_memory_bytes is not None]
    sm = memory_util = None
    if uses is not None:
        found = [uses[p.pid] for p in members if p.pid in uses]
        # two processes of one owner can share the GPU's time, but not exceed all of it
        sm = min(100.0, sum((u.sm_pct for u in found), 0.0))
        memory_util = min(100.0, sum((u.memory_pct for u in found), 0.0))
    return GpuOwner(
        kind=workload.kind,
        pod_uid=workload.pod_uid,
        container_id=workload.container_id,
        slurm_job_id=workload.slurm_job_id,
        pids=sorted(p.pid for p in members),
        used_memory_bytes=sum(memory) if memory else None,
        sm_util_pct=sm,
        memory_util_pct=memory_util,
    )


def _order(owner: GpuOwner) -> tuple[str, str, str, int, int]:
    return (
        owner.kind,
        owner.pod_uid or "",
        owner.container_id or "",
        -1 if owner.slurm_job_id is None else owner.slurm_job_id,
        owner.pids[0] if owner.pids else -1,
    )
