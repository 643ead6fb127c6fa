from __future__ import annotations

from agent.checks.nvlink import NvLinkCheck, NvLinkConfig
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Severity
from gpuwarden_common.wire import NvLink
from tests.sample_factories import gpu, sample

CONFIG = NvLinkConfig(
    raise_after_polls=2,
    clear_after_polls=3,
    error_increase=100,
    error_window_s=600.0,
    error_clear_after_polls=3,
)


def links(up: int = 18, crc: int = 0, recovery: int = 0, ts: float = 1000.0) -> NodeSample:
    nvlink = NvLink(links_total=18, links_up=up, crc_errors=crc, recovery_errors=recovery)
    return sample((gpu(5, nvlink=nvlink),), ts=ts)


def codes(check: NvLinkCheck, node: NodeSample) -> list[str]:
    return [f.code for f in check.check(node)]


def test_a_link_down_for_two_polls_makes_the_gpu_unhealthy_with_action_reboot() -> None:
    check = NvLinkCheck(CONFIG)
    assert check.check(links(up=17)) == ()
    findings = check.check(links(up=17))
    assert [(f.code, f.severity, f.action, f.gpu_index) for f in findings] == [
        ("NVLINK-DOWN", Severity.CRITICAL, Action.REBOOT, 5)
    ]


def test_a_link_down_for_one_poll_is_nothing() -> None:
    check = NvLinkCheck(CONFIG)
    assert [codes(check, links(up=u)) for u in (17, 18, 17, 18)] == [[]] * 4


def test_link_errors_rising_over_the_limit_within_the_window_warn() -> None:
    check = NvLinkCheck(CONFIG)
    codes(check, links(crc=5, ts=1000.0))
    assert codes(check, links(crc=60, recovery=50, ts=1100.0)) == ["NVLINK-ERROR-RATE"]


def test_the_check_is_unsupported_on_gpus_without_nvlink() -> None:
    node = sample((gpu(0, nvlink=NvLink()),))
    assert not NvLinkCheck(CONFIG).is_supported(node)
