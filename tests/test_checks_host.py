from __future__ import annotations

from agent.checks.host import HostCheck, HostConfig
from gpuwarden_common.health import Severity
from tests.sample_factories import GIB, host, sample

CONFIG = HostConfig(disk_full_pct=95.0, memory_pct=95.0, raise_after_polls=2, clear_after_polls=2)


def test_a_disk_full_for_two_polls_warns() -> None:
    full = sample(host=host(disk_used_bytes=980 * GIB, disk_total_bytes=1000 * GIB))
    check = HostCheck(CONFIG)
    assert check.check(full) == ()
    findings = check.check(full)
    assert [(f.code, f.severity, f.gpu_index) for f in findings] == [
        ("HOST-DISK-FULL", Severity.WARNING, None)
    ]
    assert "98.0%" in findings[0].message


def test_memory_pressure_for_two_polls_warns() -> None:
    pressed = sample(host=host(memory_used_bytes=1990 * GIB, memory_total_bytes=2048 * GIB))
    check = HostCheck(CONFIG)
    check.check(pressed)
    assert [f.code for f in check.check(pressed)] == ["HOST-MEMORY"]


def test_an_unreadable_disk_is_nothing() -> None:
    unread = sample(host=host(disk_used_bytes=None, disk_total_bytes=None))
    check = HostCheck(CONFIG)
    assert [check.check(unread) for _ in range(3)] == [()] * 3
