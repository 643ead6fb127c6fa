from __future__ import annotations

from agent.checks.pcie import PcieCheck, PcieConfig
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Severity
from gpuwarden_common.wire import Pcie
from tests.sample_factories import gpu, sample

CONFIG = PcieConfig(
    raise_after_polls=3,
    clear_after_polls=3,
    replay_increase=100,
    replay_window_s=600.0,
    replay_clear_after_polls=3,
)


def link(width: int = 16, gen: int = 5, replays: int = 0, ts: float = 1000.0) -> NodeSample:
    return sample(
        (gpu(0, pcie=Pcie(gen=gen, max_gen=5, width=width, max_width=16, replay_count=replays)),),
        ts=ts,
    )


def codes(check: PcieCheck, node: NodeSample) -> list[str]:
    return [f.code for f in check.check(node)]


def test_a_link_trained_narrower_than_its_maximum_warns_after_three_polls() -> None:
    check = PcieCheck(CONFIG)
    assert [codes(check, link(width=8)) for _ in range(3)] == [[], [], ["PCIE-DOWNGRADED"]]


def test_a_downgraded_link_is_a_warning_with_action_reboot() -> None:
    check = PcieCheck(CONFIG)
    finding = [check.check(link(width=8)) for _ in range(3)][-1][0]
    assert (finding.severity, finding.action, finding.gpu_index) == (
        Severity.WARNING,
        Action.REBOOT,
        0,
    )
    assert "x8 of x16" in finding.message


def test_a_lower_generation_at_idle_is_nothing() -> None:
    check = PcieCheck(CONFIG)
    assert [codes(check, link(gen=1)) for _ in range(5)] == [[]] * 5


def test_replays_rising_over_the_limit_within_the_window_warn() -> None:
    check = PcieCheck(CONFIG)
    codes(check, link(replays=10, ts=1000.0))
    assert codes(check, link(replays=200, ts=1300.0)) == ["PCIE-REPLAY-RATE"]


def test_replays_rising_under_the_limit_are_nothing() -> None:
    check = PcieCheck(CONFIG)
    codes(check, link(replays=10, ts=1000.0))
    assert codes(check, link(replays=90, ts=1300.0)) == []


def test_the_check_is_unsupported_without_pcie_readings() -> None:
    assert not PcieCheck(CONFIG).is_supported(sample((gpu(0, pcie=Pcie()),)))
