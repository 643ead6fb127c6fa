"""structlog, configured once per process by the daemon's ``__main__``.

Context (an agent's ``node``) is bound with ``structlog.contextvars`` and merged into every
line; :func:`in_this_context` carries it into threads, which start without it.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TextIO, TypeVar

import structlog

from gpuwarden_common.health import Severity

P = ParamSpec("P")
R = TypeVar("R")

# A level says what a line means: a GPU fault is an error on that node, a warning finding is
# a warning, and a device back to health is news, not a problem.
_SEVERITY_LEVEL = {
    Severity.OK: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.ERROR,
}


def level_of(severity: Severity) -> int:
    """The log level of a line that reports something of ``severity``."""
    return _SEVERITY_LEVEL[severity]


def in_this_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run in a copy of the caller's context: a thread's target keeps the context's
    bound log fields (the agent's node) that a new thread would otherwise lack."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.run(fn, *args, **kwargs)

    return run


def configure(level: str = "info", *, json: bool | None = None, file: TextIO | None = None) -> None:
    """JSON lines when stderr is not a terminal (journald, kubectl logs), colours when it is.
    ``file`` sends the lines elsewhere (the demo keeps its terminal for the live view)."""
    out = file or sys.stderr
    if json is None:
        json = not out.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
