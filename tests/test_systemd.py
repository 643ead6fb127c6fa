"""The systemd units and env files (systemd/), and the sd_notify client they rely on."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.settings import parse_settings as parse_agent_settings
from coordinator.settings import parse_settings as parse_coordinator_settings
from gpuwarden_common import sdnotify

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
AGENT_UNIT = SYSTEMD / "gpuwarden-agent.service"
COORDINATOR_UNIT = SYSTEMD / "gpuwarden-coordinator.service"
UNITS = (AGENT_UNIT, COORDINATOR_UNIT)
INSTALLED_BIN = "/opt/gpuwarden/bin/"

# --- sd_notify ----------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket standing in for systemd, and the environment that names it."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


def test_ready_sends_ready_1_to_the_notify_socket(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    assert sdnotify.ready(env) is True
    assert sock.recv(4096) == b"READY=1"


def test_watchdog_sends_watchdog_1_to_an_abstract_namespace_socket() -> None:
    name = f"gpuwarden-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sdnotify.watchdog({"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_stopping_sends_stopping_1(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    sdnotify.stopping(env)
    assert sock.recv(4096) == b"STOPPING=1"


def test_status_text_cannot_smuggle_a_second_assignment(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    sdnotify.status("draining\nREADY=1", env)
    assert sock.recv(4096) == b"STATUS=draining READY=1"


def test_every_call_is_a_no_op_without_notify_socket() -> None:
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.ready({}) is False
    assert sdnotify.watchdog({}) is False


def test_notify_returns_false_when_the_socket_is_gone(tmp_path: Path) -> None:
    assert sdnotify.ready({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_notify_returns_false_for_an_address_form_it_does_not_speak() -> None:
    assert sdnotify.ready({"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_watchdog_interval_is_none_without_watchdog_usec() -> None:
    assert sdnotify.watchdog_interval({}) is None


def test_watchdog_interval_is_watchdog_usec_in_seconds() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(env) == 30.0


def test_watchdog_interval_is_none_when_the_watchdog_belongs_to_another_process() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert sdnotify.watchdog_interval(env) is None


@pytest.mark.parametrize("usec", ["", "soon", "0", "-5"])
def test_watchdog_interval_is_none_for_an_unusable_watchdog_usec(usec: str) -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": usec}) is None


async def test_run_watchdog_pings_while_the_loop_is_alive(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    env = {**env, "WATCHDOG_USEC": "20000"}
    task = asyncio.create_task(sdnotify.run_watchdog(lambda: True, env))
    try:
        assert await asyncio.to_thread(sock.recv, 4096) == b"WATCHDOG=1"
    finally:
        task.cancel()


async def test_run_watchdog_withholds_the_ping_while_the_loop_is_stuck(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    env = {**env, "WATCHDOG_USEC": "2000"}
    asked = asyncio.Event()
    calls = []

    def stuck() -> bool:
        calls.append(1)
        if len(calls) >= 3:
            asked.set()
        return False

    task = asyncio.create_task(sdnotify.run_watchdog(stuck, env))
    try:
        await asyncio.wait_for(asked.wait(), 10)
    finally:
        task.cancel()
    # a ping would have been sent before the sleep that followed each answer
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


async def test_run_watchdog_returns_at_once_when_no_watchdog_is_armed() -> None:
    await asyncio.wait_for(sdnotify.run_watchdog(lambda: True, {}), 5)


# --- the unit files -----------------------------------------------------------------------


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd repeats keys (DeviceAllow=), so a dict
    would lose some."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def service(path: Path, key: str) -> list[str]:
    return [v for s, k, v in unit_entries(path) if s == "Service" and k == key]


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_type_notify_with_a_30s_watchdog_for_the_main_process(unit: Path) -> None:
    assert service(unit, "Type") == ["notify"]
    assert service(unit, "WatchdogSec") == ["30"]
    assert service(unit, "NotifyAccess") == ["main"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_restarts_on_failure_with_a_delay_and_a_start_limit(unit: Path) -> None:
    assert service(unit, "Restart") == ["on-failure"]
    assert float(service(unit, "RestartSec")[0]) > 0
    unit_section = {k: v for s, k, v in unit_entries(unit) if s == "Unit"}
    assert int(unit_section["StartLimitBurst"]) > 0
    assert int(unit_section["StartLimitIntervalSec"]) > 0


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened(unit: Path) -> None:
    for key, value in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "gpuwarden"),
        ("DevicePolicy", "closed"),
    ):
        assert service(unit, key) == [value], key
    assert service(unit, "User") == ["gpuwarden"]


def test_agent_reaches_only_the_nvidia_devices_and_reads_kmsg() -> None:
    assert sorted(service(AGENT_UNIT, "DeviceAllow")) == sorted(
        [
            "/dev/nvidiactl rw",
            "/dev/nvidia-uvm rw",
            "char-nvidia* rw",
            "/dev/kmsg r",
        ]
    )
    assert service(AGENT_UNIT, "CapabilityBoundingSet") == ["CAP_SYSLOG"]
    # ProtectKernelLogs= would hide /dev/kmsg from the agent
    assert service(AGENT_UNIT, "ProtectKernelLogs") == []


def test_coordinator_has_no_device_and_no_capability() -> None:
    assert service(COORDINATOR_UNIT, "DeviceAllow") == []
    assert service(COORDINATOR_UNIT, "PrivateDevices") == ["yes"]
    assert service(COORDINATOR_UNIT, "CapabilityBoundingSet") == [""]
    assert service(COORDINATOR_UNIT, "AmbientCapabilities") in ([], [""])


@pytest.mark.parametrize(
    ("unit", "env_name"),
    [(AGENT_UNIT, "agent.env"), (COORDINATOR_UNIT, "coordinator.env")],
    ids=["agent", "coordinator"],
)
def test_unit_reads_its_env_file_from_etc_gpuwarden(unit: Path, env_name: str) -> None:
    assert service(unit, "EnvironmentFile") == [f"/etc/gpuwarden/{env_name}"]
    assert (SYSTEMD / env_name).is_file()


def _flag_variables(settings_module: Path) -> set[str]:
    """The GPUWARDEN_* names a settings module reads (its ``e("NAME", ...)`` calls)."""
    return {f"GPUWARDEN_{m}" for m in re.findall(r'\be\("([A-Z_]+)"', settings_module.read_text())}


@pytest.mark.parametrize(
    ("env_name", "settings_module"),
    [("agent.env", "agent/settings.py"), ("coordinator.env", "coordinator/settings.py")],
    ids=["agent", "coordinator"],
)
def test_env_file_sets_only_variables_the_daemon_reads(env_name: str, settings_module: str) -> None:
    known = _flag_variables(ROOT / settings_module)
    assert known, "the settings module's flag pattern changed: update _flag_variables"
    assert set(env_file(SYSTEMD / env_name)) <= known


def test_agent_env_file_parses_into_settings_with_the_spool_in_the_state_directory() -> None:
    env = env_file(SYSTEMD / "agent.env")
    settings = parse_agent_settings([], env)
    state = Path("/var/lib") / service(AGENT_UNIT, "StateDirectory")[0]
    # ProtectSystem=strict leaves only the state directory writable
    assert settings.spool_dir is not None
    assert settings.spool_dir.is_relative_to(state)
    assert settings.broker.tls


def test_coordinator_env_file_parses_into_settings_with_state_in_the_state_directory() -> None:
    env = env_file(SYSTEMD / "coordinator.env")
    settings = parse_coordinator_settings([], env)
    state = Path("/var/lib") / service(COORDINATOR_UNIT, "StateDirectory")[0]
    assert settings.state_dir.is_relative_to(state)
    assert settings.broker.tls


def _units_with_runnable_commands(tmp_path: Path) -> list[Path]:
    """Copies of the units whose ExecStart points at stand-in executables: verify insists the
    command exists, and this machine has no /opt/gpuwarden."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gpuwarden-agent", "gpuwarden"):
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    copies = []
    for unit in UNITS:
        text = unit.read_text()
        assert INSTALLED_BIN in text
        copy = tmp_path / unit.name
        copy.write_text(text.replace(INSTALLED_BIN, f"{bin_dir}/"))
        copies.append(copy)
    return copies


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is missing: apt-get install -y systemd")
    return found


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    result = subprocess.run(
        [analyze, "verify", *map(str, _units_with_runnable_commands(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify also warns (unknown keys, bad values) without failing: warnings count too
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("unit_name", "ceiling"),
    [("gpuwarden-agent.service", 2.0), ("gpuwarden-coordinator.service", 1.1)],
)
def test_unit_exposure_stays_at_the_hardened_level(
    tmp_path: Path, unit_name: str, ceiling: float
) -> None:
    analyze = _systemd_analyze()
    copy = next(p for p in _units_with_runnable_commands(tmp_path) if p.name == unit_name)
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout[-2000:] + result.stderr
    assert float(found.group(1)) <= ceiling, result.stdout



def test_coordinator_env_file_sets_nothing_the_coordinator_ignores_without_kubernetes() -> None:
    # a policy is enforced on Kubernetes pods only: with GPUWARDEN_KUBE=off it would be a
    # setting that looks live and does nothing
    env = env_file(SYSTEMD / "coordinator.env")
    settings = parse_coordinator_settings([], env)
    assert settings.kube == "off"
    assert settings.policy is None
