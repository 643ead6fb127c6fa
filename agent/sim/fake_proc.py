"""The simulated node's /proc, as far as attribution reads it: each simulated GPU process's
cgroup file, and an agent that runs in the host's PID namespace."""

from __future__ import annotations

import threading

from agent.proc_owners import HOST_PID_NAMESPACE


class FakeProc:
    """A :class:`agent.proc_owners.ProcSource` kept by :class:`FakeNvml` as processes come and
    go. Thread-safe: the fake changes it while the collector reads."""

    def __init__(self, namespace: str = HOST_PID_NAMESPACE) -> None:
        self._lock = threading.Lock()
        self._cgroups: dict[int, str] = {}
        self._namespace = namespace

    def add(self, pid: int, cgroup: str) -> None:
        with self._lock:
            self._cgroups[pid] = cgroup

    def remove(self, pid: int) -> None:
        with self._lock:
            self._cgroups.pop(pid, None)

    def cgroup(self, pid: int) -> str | None:
        with self._lock:
            return self._cgroups.get(pid)

    def pid_namespace(self) -> str | None:
        return self._namespace
