"""Stopping a child process the way systemd and the kubelet do: SIGTERM, a grace, SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """Ask ``proc`` to stop, wait ``grace_s``, then kill it; nothing outlives the caller."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
