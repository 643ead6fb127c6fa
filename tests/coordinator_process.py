"""Runs the real ``gpuwarden coordinator`` (``python -m coordinator``) as a child process, for
the tests whose point is a crash: SIGKILL leaves no ``finally`` to run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp

from tests.coordinator_harness import Api, eventually
from tests.processes import stop


class CoordinatorProcess:
    def __init__(self, proc: subprocess.Popen[bytes], api: Api, log_path: Path) -> None:
        self.proc = proc
        self.api = api
        self.log_path = log_path

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lease release, no audit record of the stop."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def until_leading(self) -> None:
        async def health() -> dict[str, object]:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the coordinator exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text()[-2000:]}"
                )
            try:
                body: dict[str, object] = await self.api.get("/healthz")
            except aiohttp.ClientError:
                return {}
            return body

        await eventually(health, lambda h: bool(h.get("leader") and h.get("broker_connected")),
                         what="the coordinator process leading and connected")  # fmt: skip


def _http_flag(argv: Sequence[str]) -> str:
    return argv[list(argv).index("--http") + 1]


@contextlib.contextmanager
def coordinator_process(argv: Sequence[str], tmp: Path, name: str) -> Iterator[CoordinatorProcess]:
    log_path = tmp / f"coordinator-{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield CoordinatorProcess(proc, Api(f"http://{_http_flag(argv)}"), log_path)
        finally:
            stop(proc)
