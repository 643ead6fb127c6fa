"""A tiny sd_notify(3) client: tells systemd that a ``Type=notify`` service is ready, alive or
stopping.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the
variable is unset and every call is a no-op that returns False, so the daemons call these
unconditionally.

Why not the PyPI ``sdnotify`` package: its last release is from 2017, it ships no type hints
and has no watchdog interval; the protocol fits in the standard library.

Every function takes an optional ``env`` (default ``os.environ``): the variables are the
protocol's input, and tests pass their own.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

__all__ = [
    "notify",
    "ready",
    "run_watchdog",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _address(raw: str) -> str | None:
    """``$NOTIFY_SOCKET`` as a socket address; None for forms this client does not speak
    (systemd 253's ``vsock:`` addresses)."""
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace: a leading NUL, no file on disk
    if raw.startswith("/"):
        return raw
    return None


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` assignments) to systemd.

    True when the datagram went out; False when there is no systemd to tell or the send
    failed. Never raises: a daemon must not die because its supervisor's socket is gone.
    """
    raw = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    address = _address(raw) if raw else None
    if address is None or not state:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def ready(env: Mapping[str, str] | None = None) -> bool:
    """Startup is done: systemd marks the unit active and starts what waits on it."""
    return notify("READY=1", env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    """Graceful shutdown has begun (the unit shows ``deactivating``)."""
    return notify("STOPPING=1", env)


def watchdog(env: Mapping[str, str] | None = None) -> bool:
    """Still alive: resets the ``WatchdogSec=`` timer."""
    return notify("WATCHDOG=1", env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """A one-line status for ``systemctl status``."""
    # A newline would begin a new assignment: text like "x\nREADY=1" must not become one.
    return notify("STATUS=" + " ".join(text.splitlines()), env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1``, or None when no watchdog is
    armed for this process. Ping at half of it (what sd_watchdog_enabled(3) advises)."""
    environ = os.environ if env is None else env
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    # The variables are inherited by children; only the process systemd named should ping.
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    return usec / 1_000_000


async def run_watchdog(alive: Callable[[], bool], env: Mapping[str, str] | None = None) -> None:
    """Ping the watchdog at half its interval while ``alive()`` says the main loop turns.

    Returns at once when no watchdog is armed. When ``alive()`` is False the ping is skipped,
    so systemd kills and restarts a daemon whose loop is stuck, not just one whose process is
    gone. Run it as a task; cancel it on shutdown.
    """
    interval = watchdog_interval(env)
    if interval is None:
        return
    while True:
        if alive():
            watchdog(env)
        await asyncio.sleep(interval / 2)
