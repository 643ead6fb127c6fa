"""The host beside the GPUs: CPU, memory, disk, uptime, and the boot identity."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import psutil

from gpuwarden_common.wire import HostState

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def collect_host(disk_path: str = "/") -> HostState:
    """One non-blocking snapshot of the host.

    ``cpu_percent`` is the usage since the previous call in this process (psutil keeps the
    reference), so the first call after start reads 0.0; the agent's steady polling makes
    every later one meaningful without sleeping here.
    """
    load: tuple[float, float, float] | tuple[None, None, None]
    try:
        load = os.getloadavg()
    except OSError:  # not every platform has it
        load = (None, None, None)
    memory = psutil.virtual_memory()
    disk_used: int | None
    disk_total: int | None
    try:
        disk = psutil.disk_usage(disk_path)
        disk_used, disk_total = disk.used, disk.total
    except OSError:
        disk_used = disk_total = None
    return HostState(
        hostname=socket.gethostname(),
        cpu_percent=psutil.cpu_percent(interval=None),
        cpu_count=psutil.cpu_count(),
        load1=load[0],
        load5=load[1],
        load15=load[2],
        # "used" as the kernel sees pressure: what is not available to new allocations
        memory_used_bytes=memory.total - memory.available,
        memory_total_bytes=memory.total,
        disk_path=disk_path,
        disk_used_bytes=disk_used,
        disk_total_bytes=disk_total,
        uptime_s=max(0.0, time.time() - psutil.boot_time()),
    )


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The kernel's boot id; a stable hash of the boot time where /proc does not offer one.

    The coordinator uses it to tell "same boot, new sequence" from "rebooted".
    """
    try:
        boot_id = path.read_text().strip()
    except OSError:
        boot_id = ""
    if boot_id:
        return boot_id
    boot_time = int(psutil.boot_time())
    return hashlib.sha256(f"boot-time:{boot_time}".encode()).hexdigest()[:32]
