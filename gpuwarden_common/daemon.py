"""What both daemons' ``__main__`` share: the one-line startup error, signal handling and the
outer run (settings, logging, exit codes)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import structlog

from gpuwarden_common import logs
from gpuwarden_common.flags import SettingsError

log = structlog.get_logger("gpuwarden")


class StartupError(RuntimeError):
    """One line for the operator: what is wrong and what to do. Exit code 2."""


class HasLogLevel(Protocol):
    @property
    def log_level(self) -> str: ...


S = TypeVar("S", bound=HasLogLevel)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM or SIGINT once: set ``stop`` (graceful, with a deadline); twice: exit now."""
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal() -> None:
        nonlocal received
        received += 1
        if received > 1:
            log.error("second signal: exiting now")
            os._exit(1)
        log.info("stopping (send the signal again to force)")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def run_daemon(
    prog: str, parse: Callable[[], S], amain: Callable[[S], Coroutine[Any, Any, int]]
) -> int:
    """Parse settings, configure logging once, run ``amain``; errors become one line on stderr
    (exit 2), Ctrl-C exits 130."""
    try:
        settings = parse()
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        return asyncio.run(amain(settings))
    except StartupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
