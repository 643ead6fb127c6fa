"""Runs the real ``gpuwarden-agent`` entry point (``python -m agent``) as a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.processes import stop


@contextmanager
def agent_process(
    broker_url: str, node: str, *extra: str, tmp: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    args: Sequence[str] = [
        sys.executable,
        "-m",
        "agent",
        "--broker",
        broker_url,
        "--cluster",
        "c1",
        "--node",
        node,
        "--gpu-backend",
        "sim",
        "--http",
        "off",
        "--kmsg",
        "off",
        "--interval",
        "1",
        *extra,
    ]
    log = (tmp / f"agent-{node}.log").open("wb")
    proc = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        yield proc
    finally:
        stop(proc)
        log.close()
