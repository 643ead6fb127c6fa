from __future__ import annotations

from agent.checks.base import CheckResult
from agent.verdict import Verdict, apply_verdict
from gpuwarden_common.health import Action, Finding, Health, Severity
from tests.sample_factories import gpu, sample


def finding(
    severity: Severity = Severity.WARNING,
    action: Action = Action.NONE,
    gpu_index: int | None = None,
    code: str = "TEST",
    unknown: bool = False,
    message: str = "m",
) -> Finding:
    return Finding(
        check="test",
        severity=severity,
        code=code,
        message=message,
        action=action,
        gpu_index=gpu_index,
        unknown=unknown,
    )


def result(*findings: Finding) -> CheckResult:
    return CheckResult(check="test", findings=findings)


def by_index(verdict: Verdict) -> dict[int, tuple[Health, Action]]:
    return {g.index: (g.health, g.action) for g in verdict.gpus}


def test_no_findings_make_every_gpu_and_the_node_healthy() -> None:
    verdict = apply_verdict(sample(n=4), [result()])
    assert set(by_index(verdict).values()) == {(Health.HEALTHY, Action.NONE)}
    assert (verdict.health, verdict.action) == (Health.HEALTHY, Action.NONE)


def test_a_gpu_takes_its_worst_finding_and_strongest_action() -> None:
    findings = (
        finding(Severity.CRITICAL, Action.RESET_GPU, gpu_index=1),
        finding(Severity.WARNING, Action.REBOOT, gpu_index=1, code="OTHER"),
    )
    verdict = apply_verdict(sample(n=2), [result(*findings)])
    assert by_index(verdict) == {
        0: (Health.HEALTHY, Action.NONE),
        1: (Health.UNHEALTHY, Action.REBOOT),
    }


def test_a_lost_gpu_is_unhealthy_even_without_findings() -> None:
    verdict = apply_verdict(sample((gpu(0), gpu(1, lost=True))), [])
    assert by_index(verdict)[1] == (Health.UNHEALTHY, Action.REBOOT)


def test_the_node_takes_the_worst_gpu_and_the_strongest_action() -> None:
    findings = (
        finding(Severity.WARNING, Action.REPLACE, gpu_index=0),
        finding(Severity.CRITICAL, Action.RESTART_APP, gpu_index=1),
    )
    verdict = apply_verdict(sample(n=2), [result(*findings)])
    assert (verdict.health, verdict.action) == (Health.UNHEALTHY, Action.REPLACE)


def test_a_host_finding_sets_the_node_health_but_no_gpu() -> None:
    verdict = apply_verdict(sample(n=2), [result(finding(Severity.WARNING))])
    assert verdict.health is Health.DEGRADED
    assert [f.code for f in verdict.node_findings] == ["TEST"]
    assert set(by_index(verdict).values()) == {(Health.HEALTHY, Action.NONE)}


def test_a_check_that_could_not_run_makes_the_node_unknown() -> None:
    verdict = apply_verdict(sample(n=2), [result(finding(unknown=True, code="CHECK-ERROR"))])
    assert verdict.health is Health.UNKNOWN


def test_a_finding_for_a_gpu_the_sample_lacks_counts_for_the_node() -> None:
    verdict = apply_verdict(sample(n=2), [result(finding(Severity.CRITICAL, gpu_index=7))])
    assert verdict.health is Health.UNHEALTHY
    assert [f.gpu_index for f in verdict.node_findings] == [7]


def test_all_findings_are_listed_flat() -> None:
    findings = (finding(gpu_index=0), finding(code="HOST"))
    verdict = apply_verdict(sample(n=1), [result(findings[0]), result(findings[1])])
    assert verdict.findings == findings


def test_a_first_verdict_counts_as_changed() -> None:
    assert apply_verdict(sample(n=2), []).changed_from(None)


def test_an_equal_verdict_is_not_changed_even_when_messages_differ() -> None:
    before = apply_verdict(sample(n=2), [result(finding(gpu_index=0, message="41 errors"))])
    after = apply_verdict(sample(n=2), [result(finding(gpu_index=0, message="42 errors"))])
    assert not after.changed_from(before)


def test_a_gpu_action_change_is_a_change() -> None:
    before = apply_verdict(sample(n=2), [result(finding(Severity.CRITICAL, Action.REBOOT, 1))])
    after = apply_verdict(sample(n=2), [result(finding(Severity.CRITICAL, Action.REPLACE, 1))])
    assert after.changed_from(before)


def test_a_change_hidden_by_a_worse_gpu_is_still_a_change() -> None:
    worst = finding(Severity.CRITICAL, Action.REPLACE, gpu_index=0)
    before = apply_verdict(sample(n=2), [result(worst)])
    after = apply_verdict(sample(n=2), [result(worst, finding(gpu_index=1))])
    assert (after.health, after.action) == (before.health, before.action)
    assert after.changed_from(before)
