"""A directory shaped like /proc, for attribution tests and benchmarks: ``<pid>/cgroup`` files
and the agent's own ``self/ns/pid`` link."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from agent.proc_owners import HOST_PID_NAMESPACE


def make_proc_tree(
    root: Path, cgroups: Mapping[int, str], namespace: str | None = HOST_PID_NAMESPACE
) -> Path:
    """``cgroups``: pid -> the text of its cgroup file. ``namespace``: what the agent's
    ``self/ns/pid`` link reads (None: no link, as where it cannot be read)."""
    for pid, text in cgroups.items():
        (root / str(pid)).mkdir(parents=True, exist_ok=True)
        (root / str(pid) / "cgroup").write_text(text)
    if namespace is not None:
        (root / "self" / "ns").mkdir(parents=True, exist_ok=True)
        # dangling, like the real one: readlink reads it, nothing opens it
        os.symlink(namespace, root / "self" / "ns" / "pid")
    return root
