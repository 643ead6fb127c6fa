"""The policy file: what loads, what is refused (with file, field and reason), and diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.governance.policy import (
    AdmissionOrder,
    IdleComputeAllocation,
    Lending,
    Policy,
    PolicyError,
    VictimOrder,
    diff,
    load_policy,
    parse_policy,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"

GOOD = """
admission: task-ranking
idleCompute: fair-share
priorityClasses:
  - {name: real-time-inference, weight: 100}
  - {name: training, weight: 70}
teams:
  - name: research
    namespace: research
    quota: {gpus: 16}
    lending: lend-and-borrow
    borrowLimitPercent: 50
    fairShareWeight: 50
    preemptLowerPriority: true
  - name: vision
    namespace: vision-ns
    quota: {gpus: 8}
    lending: dont-lend
"""


def refusal(text: str, tmp_path: Path) -> PolicyError:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return caught.value


def with_team_field(field: str, value: str) -> str:
    return GOOD.replace(
        "    fairShareWeight: 50\n", f"    fairShareWeight: 50\n    {field}: {value}\n"
    )


def test_the_design_example_loads_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    policy = load_policy(path)
    assert policy.admission is AdmissionOrder.TASK_RANKING
    assert policy.idle_compute is IdleComputeAllocation.FAIR_SHARE
    assert policy.class_weights() == {"real-time-inference": 100, "training": 70}
    research = policy.teams[0]
    assert (research.name, research.namespace, research.quota.gpus) == ("research", "research", 16)
    assert research.lending is Lending.LEND_AND_BORROW
    assert (research.borrow_limit_percent, research.fair_share_weight) == (50, 50)
    assert research.preempt_lower_priority is True


def test_omitted_fields_take_hyperpods_defaults() -> None:
    policy = parse_policy("teams: [{name: a, namespace: a, quota: {gpus: 4}}]")
    team = policy.teams[0]
    assert policy.admission is AdmissionOrder.FIRST_COME_FIRST_SERVE
    assert policy.idle_compute is IdleComputeAllocation.FAIR_SHARE
    assert policy.preemption.victim_order is VictimOrder.CHECKPOINT_AWARE
    assert policy.requeue.max_requeues == 3
    assert (team.lending, team.borrow_limit_percent, team.fair_share_weight) == (
        Lending.LEND_AND_BORROW,
        50,
        0,
    )
    assert team.preempt_lower_priority is False


def test_the_shipped_example_policy_loads() -> None:
    policy = load_policy(EXAMPLE)
    assert len(policy.teams) == 4
    assert policy.default_priority_class == "training"


def test_an_unknown_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    error = refusal(with_team_field("borowLimitPercent", "20"), tmp_path)
    assert error.source.endswith("policy.yaml")
    [problem] = error.problems
    assert problem.field == "teams[0].borowLimitPercent"
    assert "unknown field" in problem.reason
    assert "borrowLimitPercent" in problem.reason


def test_an_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    error = refusal(GOOD + "preemptionn: {}\n", tmp_path)
    assert [p.field for p in error.problems] == ["preemptionn"]


def test_a_snake_case_spelling_is_an_unknown_field_in_a_file(tmp_path: Path) -> None:
    error = refusal(with_team_field("borrow_limit_percent", "20"), tmp_path)
    assert [p.field for p in error.problems] == ["teams[0].borrow_limit_percent"]


def test_borrow_limit_above_500_percent_names_the_field_and_the_bound(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("borrowLimitPercent: 50", "borrowLimitPercent: 900"), tmp_path)
    [problem] = error.problems
    assert problem.field == "teams[0].borrowLimitPercent"
    assert "500" in problem.reason
    assert "900" in problem.reason
    assert "policy.yaml: teams[0].borrowLimitPercent:" in str(error)


def test_borrow_limit_below_1_percent_is_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("borrowLimitPercent: 50", "borrowLimitPercent: 0"), tmp_path)
    assert [p.field for p in error.problems] == ["teams[0].borrowLimitPercent"]


def test_a_priority_weight_above_100_is_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("weight: 70", "weight: 170"), tmp_path)
    assert [p.field for p in error.problems] == ["priorityClasses[1].weight"]


def test_a_fair_share_weight_above_100_is_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("fairShareWeight: 50", "fairShareWeight: 101"), tmp_path)
    assert [p.field for p in error.problems] == ["teams[0].fairShareWeight"]


def test_a_negative_quota_is_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("gpus: 8", "gpus: -8"), tmp_path)
    assert [p.field for p in error.problems] == ["teams[1].quota.gpus"]


def test_an_unknown_lending_mode_lists_the_valid_ones(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("lending: dont-lend", "lending: never"), tmp_path)
    [problem] = error.problems
    assert problem.field == "teams[1].lending"
    assert "dont-lend" in problem.reason


def test_an_unknown_admission_order_is_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("admission: task-ranking", "admission: fifo"), tmp_path)
    assert [p.field for p in error.problems] == ["admission"]


def test_a_namespace_that_is_not_a_dns_label_is_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("namespace: vision-ns", "namespace: Vision_NS"), tmp_path)
    [problem] = error.problems
    assert problem.field == "teams[1].namespace"
    assert "DNS label" in problem.reason


def test_a_missing_quota_is_refused(tmp_path: Path) -> None:
    error = refusal("teams: [{name: a, namespace: a}]", tmp_path)
    assert [p.field for p in error.problems] == ["teams[0].quota"]


def test_duplicate_team_names_are_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("  - name: vision", "  - name: research"), tmp_path)
    [problem] = error.problems
    assert problem.field == "teams[1].name"
    assert "duplicate" in problem.reason and "teams[0]" in problem.reason


def test_duplicate_team_namespaces_are_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("namespace: vision-ns", "namespace: research"), tmp_path)
    assert [p.field for p in error.problems] == ["teams[1].namespace"]


def test_duplicate_priority_class_names_are_refused(tmp_path: Path) -> None:
    error = refusal(GOOD.replace("name: training", "name: real-time-inference"), tmp_path)
    assert [p.field for p in error.problems] == ["priorityClasses[1].name"]


def test_a_default_class_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    error = refusal(GOOD + "defaultPriorityClass: batch\n", tmp_path)
    assert [p.field for p in error.problems] == ["defaultPriorityClass"]


def test_a_repeated_yaml_key_is_refused_with_its_line(tmp_path: Path) -> None:
    error = refusal("admission: task-ranking\nadmission: first-come-first-serve\n", tmp_path)
    [problem] = error.problems
    assert "duplicate key 'admission'" in problem.reason
    assert "line 2" in problem.reason


def test_invalid_yaml_is_refused_with_its_line(tmp_path: Path) -> None:
    error = refusal("teams: [\n", tmp_path)
    assert "invalid YAML" in error.problems[0].reason


def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    error = refusal("- a\n- b\n", tmp_path)
    assert "expected a mapping" in error.problems[0].reason


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    error = refusal("", tmp_path)
    assert "empty" in error.problems[0].reason


def test_a_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "nope.yaml")
    assert caught.value.source.endswith("nope.yaml")
    assert "cannot read" in caught.value.problems[0].reason


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("weight: 70", "weight: 170").replace("gpus: 8", "gpus: -1")
    error = refusal(text, tmp_path)
    assert {p.field for p in error.problems} == {"priorityClasses[1].weight", "teams[1].quota.gpus"}


def test_a_policy_built_in_python_is_checked_too() -> None:
    with pytest.raises(PolicyError):
        Policy(default_priority_class="missing")


def test_borrow_limit_in_gpus_is_the_percent_of_the_quota() -> None:
    policy = parse_policy(GOOD)
    assert policy.teams[0].borrow_limit_gpus == 8
    assert policy.teams[1].borrow_limit_gpus == 0  # dont-lend: never borrows


def test_a_lend_only_team_cannot_borrow() -> None:
    policy = parse_policy(GOOD.replace("lending: lend-and-borrow", "lending: lend"))
    assert policy.teams[0].borrow_limit_gpus == 0


def test_requeue_backoff_doubles_up_to_its_cap() -> None:
    policy = parse_policy("requeue: {backoffSeconds: 10, backoffMaxSeconds: 35}")
    assert [policy.requeue.backoff_for(n) for n in (1, 2, 3, 4)] == [10, 20, 35, 35]


def test_diff_reports_a_changed_quota_by_team_name() -> None:
    old = parse_policy(GOOD)
    new = parse_policy(GOOD.replace("gpus: 16", "gpus: 24"))
    assert [str(change) for change in diff(old, new)] == ["teams[research].quota.gpus: 16 -> 24"]


def test_diff_of_a_reordered_policy_is_empty() -> None:
    old = parse_policy(GOOD)
    swapped = old.model_copy(update={"teams": tuple(reversed(old.teams))})
    assert diff(old, swapped) == []


def test_diff_reports_a_removed_team_as_one_change() -> None:
    old = parse_policy(GOOD)
    new = old.model_copy(update={"teams": old.teams[:1]})
    [change] = diff(old, new)
    assert change.field == "teams[vision]"
    assert change.after is None
    assert str(change).startswith("teams[vision]: removed")


def test_diff_reports_settings_and_class_weights() -> None:
    old = parse_policy(GOOD)
    new = parse_policy(
        GOOD.replace("admission: task-ranking", "admission: first-come-first-serve").replace(
            "weight: 70", "weight: 60"
        )
    )
    assert [str(c) for c in diff(old, new)] == [
        "admission: 'task-ranking' -> 'first-come-first-serve'",
        "priorityClasses[training].weight: 70 -> 60",
    ]


def test_a_victims_checkpoint_grace_is_capped_at_ten_minutes_by_default() -> None:
    policy = parse_policy("teams: [{name: a, namespace: a, quota: {gpus: 4}}]")
    assert policy.preemption.max_grace_seconds == 600
    assert policy.preemption.grace_for(864_000) == 600
    assert policy.preemption.grace_for(45) == 45
    assert policy.preemption.grace_for(None) == policy.preemption.default_grace_seconds


def test_a_default_grace_above_the_maximum_is_refused_with_field_and_reason(
    tmp_path: Path,
) -> None:
    text = GOOD + "preemption: {defaultGraceSeconds: 900, maxGraceSeconds: 300}\n"
    [problem] = refusal(text, tmp_path).problems
    assert problem.field == "preemption.defaultGraceSeconds"
    assert "at most maxGraceSeconds (300)" in problem.reason


def test_a_negative_maximum_grace_is_refused(tmp_path: Path) -> None:
    [problem] = refusal(GOOD + "preemption: {maxGraceSeconds: -1}\n", tmp_path).problems
    assert problem.field == "preemption.maxGraceSeconds"
