"""The daemons tell systemd they are ready, feed the watchdog while they work, and say when they
stop (Type=notify, WatchdogSec in the units under systemd/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers import Mosquitto, free_port

pytestmark = pytest.mark.slow


def _datagrams(sock: socket.socket, want: set[str], timeout: float) -> set[str]:
    sock.settimeout(timeout)
    seen: set[str] = set()
    try:
        while not want <= seen:
            seen.update(sock.recv(4096).decode().splitlines())
    except TimeoutError:
        pass
    return seen


@pytest.mark.broker
def test_the_agent_sends_ready_watchdog_and_stopping(mosquitto: Mosquitto, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--broker", mosquitto.url, "--node", "sd-node",
             "--gpu-backend", "sim", "--http", "off", "--kmsg", "off", "--interval", "1"],
            env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            seen = _datagrams(sock, {"READY=1", "WATCHDOG=1"}, timeout=20)
            proc.send_signal(signal.SIGTERM)
            seen |= _datagrams(sock, {"STOPPING=1"}, timeout=20)
        finally:
            proc.kill()
            proc.wait(10)
    assert {"READY=1", "WATCHDOG=1", "STOPPING=1"} <= seen


def test_the_coordinator_sends_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "--embedded-broker", "--broker",
             f"mqtt://127.0.0.1:{free_port()}", "--state", str(tmp_path / "state"),
             "--http", "off"],
            env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            seen = _datagrams(sock, {"READY=1", "WATCHDOG=1"}, timeout=20)
            proc.send_signal(signal.SIGTERM)
            seen |= _datagrams(sock, {"STOPPING=1"}, timeout=20)
            assert proc.wait(20) == 0
        finally:
            proc.kill()
            proc.wait(10)
    assert {"READY=1", "WATCHDOG=1", "STOPPING=1"} <= seen
