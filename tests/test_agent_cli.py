"""What an operator sees from `gpuwarden-agent` on the command line."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from gpuwarden_common.wire import Kind, StateDigest, decode, decode_state, node_topic


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "--http", "off", "--kmsg", "off", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_without_nvml_the_agent_exits_2_with_one_line_that_says_what_to_do() -> None:
    # this machine has no NVIDIA driver: the real backend cannot start
    done = _agent("--once")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gpuwarden-agent: ") and "NVML" in last
    assert "--gpu-backend sim" in last
    assert "Traceback" not in done.stderr


def test_once_prints_a_state_message_that_the_coordinator_accepts() -> None:
    done = _agent("--once", "--gpu-backend", "sim", "--node", "n1", "--cluster", "c1")
    assert done.returncode == 0, done.stderr
    msg = decode(node_topic("c1", "n1", Kind.STATE), done.stdout.strip())
    assert isinstance(msg, StateDigest)  # what the coordinator reads of it
    assert len(msg.gpus) == 8 and msg.health.value == "healthy"
    assert len(decode_state(done.stdout.strip()).gpus) == 8  # and every reading is valid
    # the simulated node's pods, attributed through its simulated /proc
    assert msg.attribution == "cgroup" and all(g.owners for g in msg.gpus)


def test_a_bad_broker_url_is_refused_with_an_example() -> None:
    done = _agent("--broker", "localhost:1883")
    assert done.returncode == 2
    assert "mqtt://" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_xid_table_names_the_file_the_code_and_the_field(tmp_path: Path) -> None:
    table = tmp_path / "xid.yaml"
    table.write_text("xids:\n  94:\n    severity: bogus\n")
    done = _agent("--once", "--gpu-backend", "sim", "--xid-table", str(table))
    assert done.returncode == 2
    assert str(table) in done.stderr and "94" in done.stderr and "severity" in done.stderr


def test_an_http_port_in_use_is_one_line_that_says_what_to_do() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "agent", "--gpu-backend", "sim", "--kmsg", "off",
             "--broker", "mqtt://127.0.0.1:1", "--http", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert f"--http 127.0.0.1:{port}: cannot listen" in last and "--http off" in last
    assert "Traceback" not in done.stderr


def test_once_on_a_terminal_prints_indented_json() -> None:
    """A node with several processes per GPU: its indented state is larger than a pty
    holds unread (about 17 KB on Linux), so the terminal is read as the agent writes, as a
    person's terminal is."""
    controller, terminal = pty.openpty()
    with os.fdopen(controller, "rb", buffering=0) as screen:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "--http", "off", "--kmsg", "off", "--once",
             "--gpu-backend", "sim", "--node", "n1", "--sim-processes-per-gpu", "4"],
            stdout=terminal, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(terminal)  # the agent holds the only writing end: reads end when it exits
        try:
            shown = _read_all(screen, within_s=60).decode().replace("\r\n", "\n")
            returncode = agent.wait(timeout=10)
        finally:
            agent.kill()
    assert returncode == 0
    assert len(shown) > 17 * 1024  # the case that would block an unread terminal
    assert shown.startswith('{\n  "')
    assert json.loads(shown)["node"] == "n1"


def test_once_into_a_pipe_prints_one_line_of_json() -> None:
    done = _agent("--once", "--gpu-backend", "sim", "--node", "n1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1


def _read_all(screen: io.RawIOBase, within_s: float) -> bytes:
    """Everything written to the terminal until its writing side closes."""
    deadline = time.monotonic() + within_s
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([screen], [], [], max(0.0, remaining))
        if not ready:
            raise AssertionError(f"the terminal was still open after {within_s:g} s")
        try:
            chunk = screen.read(65536)
        except OSError:  # EIO: the writing side is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
