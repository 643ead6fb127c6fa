"""Running Slurm's commands: the one place gpuwarden starts ``scontrol``, ``sinfo``,
``squeue`` and ``scancel``.

Each runs as an asyncio subprocess with a deadline, so a controller that hangs costs the
event loop nothing and the caller a :class:`SlurmUnavailable` after ``timeout_s``, never a
stuck coordinator. ``pyslurm`` does not build against Slurm 22.05 and slurmrestd's v0.0.38
API has no drain or requeue: the commands are Slurm's stable interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

log = structlog.get_logger("coordinator.slurm")

PROGRAMS = ("scontrol", "sinfo", "squeue", "scancel")


class SlurmUnavailable(RuntimeError):
    """A command could not be run, timed out, or failed: the controller may be down."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str:
        """One line for logs and audit records."""
        text = (self.stderr.strip() or self.stdout.strip() or f"exit {self.returncode}")
        return " ".join(text.split())[:300]


class SlurmRunner(Protocol):
    """Runs one Slurm program; what the actuator and the requeue need of Slurm."""

    async def run(self, program: str, *args: str) -> CommandResult:
        """Raises :class:`SlurmUnavailable` when the program cannot run or times out; a
        failing command is a result with its exit code."""
        ...


class SlurmCommands:
    """Slurm's programs from ``bin_dir`` (else ``PATH``), talking to the controller that
    ``conf`` names (else Slurm's default, ``$SLURM_CONF`` or /etc/slurm/slurm.conf)."""

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        conf: Path | None = None,
        timeout_s: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.timeout_s = timeout_s
        self._env = dict(os.environ if environ is None else environ)
        if conf is not None:
            self._env["SLURM_CONF"] = str(conf)
        self._paths: dict[str, str] = {}

    def missing(self) -> list[str]:
        """The programs this install lacks (checked once at startup, to fail with advice)."""
        return [p for p in PROGRAMS if self._path(p) is None]

    def _path(self, program: str) -> str | None:
        if program not in self._paths:
            search = str(self.bin_dir) if self.bin_dir is not None else self._env.get("PATH")
            found = shutil.which(program, path=search)
            if found is None:
                return None
            self._paths[program] = found
        return self._paths[program]

    async def run(self, program: str, *args: str) -> CommandResult:
        path = self._path(program)
        argv = (program, *args)
        if path is None:
            where = f"in {self.bin_dir}" if self.bin_dir is not None else "on PATH"
            raise SlurmUnavailable(f"{program} not found {where}; install slurm-client or "
                                   "point --slurm-bin at Slurm's bin directory")  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                path, *args, env=self._env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise SlurmUnavailable(f"{program}: cannot run {path} ({exc})") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            raise SlurmUnavailable(
                f"{' '.join(argv)}: no answer within {self.timeout_s:g}s (is slurmctld up?)"
            ) from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: leave no process behind
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await proc.wait()
        result = CommandResult(argv, proc.returncode or 0, out.decode(errors="replace"),
                               err.decode(errors="replace"))  # fmt: skip
        if not result.ok:
            log.warning("slurm command failed", argv=list(argv), error=result.error)
        return result
