"""The owner and name of each process NVML reports, read from /proc and kept by pid.

NVML gives host PIDs. They mean the same processes to the agent only in the host's PID
namespace: a systemd unit, or a DaemonSet pod with ``hostPID: true``. Anywhere else a PID
names another process or none, so the agent checks its own namespace once (the initial PID
namespace has a fixed inode, ``PROC_PID_INIT_INO``) and, outside it, attributes nothing
rather than something wrong.

A snapshot reads ``/proc/<pid>/cgroup`` only for processes it has not seen before: an
entry stays while its PID keeps showing up on a GPU and goes at the first pass without it,
since by the time NVML shows that PID again it may be another process. The table is bounded
besides. Reads block (procfs): call from the collector's thread, never the event loop.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil
import structlog

from agent.attribution import UNKNOWN, Workload, parse_cgroup
from gpuwarden_common.wire import Attribution

log = structlog.get_logger(__name__)

# readlink(/proc/self/ns/pid) in the initial PID namespace: PROC_PID_INIT_INO (0xEFFFFFFC),
# fixed by the kernel since Linux 3.8
HOST_PID_NAMESPACE = "pid:[4026531836]"
MAX_ENTRIES = 4096  # 4 times the wire's 1,024 processes per GPU


class ProcSource(Protocol):
    """The two things attribution reads from /proc (a directory tree, or the simulator)."""

    def cgroup(self, pid: int) -> str | None:
        """The text of ``/proc/<pid>/cgroup``; None when there is none to read."""
        ...

    def pid_namespace(self) -> str | None:
        """``readlink /proc/self/ns/pid`` for the agent itself; None when unreadable."""
        ...


class ProcDir:
    """A /proc tree: the real one, or any directory shaped like it (``--proc-root``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def cgroup(self, pid: int) -> str | None:
        try:
            return (self.root / str(pid) / "cgroup").read_text()
        except (OSError, UnicodeDecodeError):
            return None  # the process ended, or the entry is not readable here

    def pid_namespace(self) -> str | None:
        try:
            return os.readlink(self.root / "self" / "ns" / "pid")
        except OSError:
            return None


def process_name(pid: int) -> str | None:
    """The process's name as psutil reads it (the comm, or argv[0] where comm is cut)."""
    try:
        return psutil.Process(pid).name()[:256] or None
    except psutil.Error:
        return None  # another PID namespace, or the process already ended


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    workload: Workload
    name: str | None


class ProcessTable:
    """What each GPU process is (owner and name), looked up once per process.

    ``proc`` None turns attribution off: every process is ``unknown`` and /proc is not read
    for it. ``process_name`` is asked once per process as well.
    """

    def __init__(
        self,
        proc: ProcSource | None,
        *,
        process_name: Callable[[int], str | None],
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._proc = proc
        self._name = process_name
        self._max = max_entries
        self._known: OrderedDict[int, ProcessFacts] = OrderedDict()
        self._seen: set[int] = set()
        self._attribution: Attribution | None = None if proc is not None else Attribution.OFF

    def __len__(self) -> int:
        return len(self._known)

    @property
    def attribution(self) -> Attribution | None:
        """How processes are attributed; None until the first pass settles it (this never
        reads /proc, so the event loop may ask)."""
        return self._attribution

    def facts(self, pid: int) -> ProcessFacts:
        self._seen.add(pid)
        found = self._known.get(pid)
        if found is not None:
            return found
        found = ProcessFacts(self._workload(pid), self._name(pid))
        self._known[pid] = found
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        return found

    def end_pass(self) -> None:
        """Forget the processes this pass did not ask about (and settle the attribution
        mode, on a node where no GPU runs anything yet)."""
        self._mode()
        for pid in [p for p in self._known if p not in self._seen]:
            del self._known[pid]
        self._seen.clear()

    def _workload(self, pid: int) -> Workload:
        if self._mode() is not Attribution.CGROUP or self._proc is None:
            return UNKNOWN
        text = self._proc.cgroup(pid)
        return UNKNOWN if text is None else parse_cgroup(text)

    def _mode(self) -> Attribution:
        if self._attribution is None:
            assert self._proc is not None
            namespace = self._proc.pid_namespace()
            # unreadable (an old kernel, a restricted /proc): attribute as best we can
            if namespace is not None and namespace != HOST_PID_NAMESPACE:
                self._attribution = Attribution.NO_HOST_PID
                log.warning(
                    "GPU processes cannot be attributed: the agent is not in the host's PID "
                    "namespace (run the DaemonSet with hostPID: true)",
                    pid_namespace=namespace,
                )
            else:
                self._attribution = Attribution.CGROUP
        return self._attribution
