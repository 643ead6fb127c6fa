from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from agent.checks.base import CheckResult
from agent.checks.runner import CheckRunner
from agent.sample import NodeSample
from gpuwarden_common.health import Finding, Health, Severity
from tests.sample_factories import sample

TIMEOUT_S = 0.5  # generous: a busy CI box must not make the quick checks look hung
WAIT_S = 10.0  # an upper bound for the test, never reached when the code works


class Recording:
    """A check that counts its calls and returns one warning."""

    def __init__(self, name: str, supported: bool = True) -> None:
        self.name = name
        self.supported = supported
        self.calls = 0

    def is_supported(self, sample: NodeSample) -> bool:
        return self.supported

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        self.calls += 1
        return (Finding(check=self.name, severity=Severity.WARNING, code="SEEN", message="seen"),)


class Raising(Recording):
    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        self.calls += 1
        raise RuntimeError("NVML said no")


class Hanging(Recording):
    """Blocks until released, like a driver call that does not return."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = threading.Event()

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        self.calls += 1
        self.release.wait(WAIT_S)
        return ()


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    check = Hanging("hangs")
    yield check
    check.release.set()


def codes(results: list[CheckResult]) -> dict[str, list[str]]:
    return {r.check: [f.code for f in r.findings] for r in results}


def wait_until_released(runner: CheckRunner, name: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while name in runner.hung:
        assert time.monotonic() < deadline, f"{name} never returned"
        time.sleep(0.005)


def test_results_come_in_the_order_of_the_checks() -> None:
    runner = CheckRunner([Recording("a"), Recording("b"), Recording("c")])
    assert [r.check for r in runner.run(sample())] == ["a", "b", "c"]
    runner.close()


def test_each_result_carries_its_duration() -> None:
    runner = CheckRunner([Recording("a")])
    (result,) = runner.run(sample())
    assert result.duration_s > 0
    runner.close()


def test_an_unsupported_check_is_skipped() -> None:
    skipped = Recording("skipped", supported=False)
    runner = CheckRunner([skipped, Recording("b")])
    assert [r.check for r in runner.run(sample())] == ["b"]
    assert skipped.calls == 0
    runner.close()


def test_a_raising_check_becomes_an_unknown_check_error_and_the_others_still_run() -> None:
    runner = CheckRunner([Recording("a"), Raising("boom"), Recording("c")])
    results = runner.run(sample())
    assert codes(results) == {"a": ["SEEN"], "boom": ["CHECK-ERROR"], "c": ["SEEN"]}
    (error,) = results[1].findings
    assert error.unknown
    assert error.health is Health.UNKNOWN
    assert "RuntimeError: NVML said no" in error.message
    assert results[1].error is not None
    runner.close()


def test_a_hanging_check_becomes_check_timeout_and_the_others_still_run(
    hanging: Hanging,
) -> None:
    runner = CheckRunner([Recording("a"), hanging, Recording("c")], timeout_s=TIMEOUT_S)
    results = runner.run(sample())
    assert codes(results) == {"a": ["SEEN"], "hangs": ["CHECK-TIMEOUT"], "c": ["SEEN"]}
    assert results[1].findings[0].unknown
    runner.close()


def test_a_hung_check_is_not_called_again_while_its_call_is_running(hanging: Hanging) -> None:
    after = Recording("after")
    runner = CheckRunner([hanging, after], timeout_s=TIMEOUT_S)
    runner.run(sample())
    results = runner.run(sample())
    assert codes(results) == {"hangs": ["CHECK-TIMEOUT"], "after": ["SEEN"]}
    assert "still running" in results[0].findings[0].message
    assert (hanging.calls, after.calls) == (1, 2)
    runner.close()


def test_a_hung_check_is_called_again_once_its_call_returns(hanging: Hanging) -> None:
    runner = CheckRunner([hanging], timeout_s=TIMEOUT_S)
    runner.run(sample())
    hanging.release.set()
    wait_until_released(runner, "hangs")
    assert codes(runner.run(sample())) == {"hangs": []}
    assert hanging.calls == 2
    runner.close()


def test_a_hung_check_does_not_pile_up_threads(hanging: Hanging) -> None:
    runner = CheckRunner([hanging, Recording("b")], timeout_s=TIMEOUT_S)
    runner.run(sample())
    threads_after_first = threading.active_count()
    for _ in range(10):
        runner.run(sample())
    assert threading.active_count() == threads_after_first
    runner.close()


def test_check_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="twice"):
        CheckRunner([Recording("twice"), Recording("twice")])
