"""Live reload of the policy file: what a change, a bad file and a ConfigMap swap do."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from coordinator.audit import AuditKind, AuditLog
from coordinator.governance import Policy, PolicyError
from coordinator.policy_watch import PolicyFile, PolicyWatch, Refused, Reloaded, one_line


def policy_text(quota: int = 8, *, extra: str = "") -> str:
    return (
        "admission: task-ranking\n"
        f"{extra}"
        "teams:\n"
        f"  - {{name: research, namespace: research, quota: {{gpus: {quota}}}}}\n"
    )


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = tmp_path / "policy.yaml"
    file.write_text(policy_text())
    return file


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    with AuditLog(tmp_path / "audit.sqlite3", durable=False) as log:
        yield log


# --- the file ---------------------------------------------------------------------------------


def test_loading_a_bad_file_names_the_file_the_field_and_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_text(quota=-1))

    with pytest.raises(PolicyError) as refused:
        PolicyFile.load(bad)

    assert one_line(refused.value) == (
        f"{bad}: teams[0].quota.gpus: Input should be greater than or equal to 0 (got -1)"
    )


def test_an_unchanged_file_reloads_nothing(path: Path) -> None:
    policy_file = PolicyFile.load(path)

    assert policy_file.poll() is None


def test_a_changed_file_is_reloaded_with_its_differences(path: Path) -> None:
    policy_file = PolicyFile.load(path)
    path.write_text(policy_text(quota=16))

    outcome = policy_file.poll()

    assert isinstance(outcome, Reloaded)
    assert [str(change) for change in outcome.changes] == ["teams[research].quota.gpus: 8 -> 16"]
    assert policy_file.policy.teams[0].quota.gpus == 16
    assert policy_file.poll() is None


def test_a_change_of_comments_only_is_no_reload(path: Path) -> None:
    policy_file = PolicyFile.load(path)
    path.write_text("# reviewed by the platform team\n" + policy_text())

    assert policy_file.poll() is None


def test_a_bad_file_is_refused_once_and_the_policy_in_force_is_kept(path: Path) -> None:
    policy_file = PolicyFile.load(path)
    path.write_text(policy_text(extra="idleCompute: whoever-asks-first\n"))

    outcome = policy_file.poll()
    again = policy_file.poll()

    assert isinstance(outcome, Refused)
    assert [p.field for p in outcome.error.problems] == ["idleCompute"]
    assert again is None
    assert policy_file.policy.teams[0].quota.gpus == 8


def test_a_file_repaired_after_a_refusal_is_reloaded_even_when_it_changes_nothing(
    path: Path,
) -> None:
    policy_file = PolicyFile.load(path)
    path.write_text("teams: [")
    assert isinstance(policy_file.poll(), Refused)

    path.write_text(policy_text())
    outcome = policy_file.poll()

    assert isinstance(outcome, Reloaded)
    assert outcome.changes == ()


def test_a_file_that_disappears_is_refused_and_the_policy_in_force_is_kept(path: Path) -> None:
    policy_file = PolicyFile.load(path)
    path.unlink()

    outcome = policy_file.poll()

    assert isinstance(outcome, Refused)
    assert "cannot read the file" in str(outcome.error)
    assert policy_file.policy.teams[0].quota.gpus == 8


def test_a_configmap_update_by_symlink_swap_is_seen(tmp_path: Path) -> None:
    # the kubelet's layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>
    mount = tmp_path / "mount"
    first, second = mount / "..2025_03_01_12_00_00", mount / "..2025_03_01_12_05_00"
    first.mkdir(parents=True)
    second.mkdir()
    (first / "policy.yaml").write_text(policy_text(quota=8))
    (second / "policy.yaml").write_text(policy_text(quota=24))
    (mount / "..data").symlink_to(first.name)
    (mount / "policy.yaml").symlink_to("..data/policy.yaml")
    policy_file = PolicyFile.load(mount / "policy.yaml")

    (mount / "..data_tmp").symlink_to(second.name)
    os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap
    outcome = policy_file.poll()

    assert isinstance(outcome, Reloaded)
    assert policy_file.policy.teams[0].quota.gpus == 24


# --- the watch --------------------------------------------------------------------------------


class Applied:
    def __init__(self) -> None:
        self.policies: list[Policy] = []

    def __call__(self, policy: Policy) -> None:
        self.policies.append(policy)


async def test_a_reload_is_applied_and_audited_with_what_changed(
    path: Path, audit: AuditLog
) -> None:
    applied = Applied()
    watch = PolicyWatch(PolicyFile.load(path), applied, audit, actor="coord-a")
    rewrite(path, policy_text(quota=12))

    await watch.check()

    assert [p.teams[0].quota.gpus for p in applied.policies] == [12]
    [entry] = audit.query(kind=AuditKind.POLICY)
    assert (entry.actor, entry.action, entry.outcome) == ("coord-a", "reload", "applied")
    assert "teams[research].quota.gpus: 8 -> 12" in entry.reason
    assert entry.details["changes"] == [
        {"field": "teams[research].quota.gpus", "before": 8, "after": 12}
    ]


async def test_a_refusal_is_audited_with_field_and_reason_and_nothing_is_applied(
    path: Path, audit: AuditLog
) -> None:
    applied = Applied()
    watch = PolicyWatch(PolicyFile.load(path), applied, audit, actor="coord-a")
    rewrite(path, policy_text(quota=-4))

    await watch.check()
    await watch.check()

    assert applied.policies == []
    [entry] = audit.query(kind=AuditKind.POLICY)
    assert entry.outcome == "refused"
    assert entry.details["problems"] == [
        {
            "field": "teams[0].quota.gpus",
            "reason": "Input should be greater than or equal to 0 (got -4)",
        }
    ]
    assert watch.policy.teams[0].quota.gpus == 8


async def test_reloads_are_counted_by_outcome(path: Path, audit: AuditLog) -> None:
    registry = CollectorRegistry()
    watch = PolicyWatch(PolicyFile.load(path), Applied(), audit, actor="c", registry=registry)
    rewrite(path, policy_text(quota=12))
    await watch.check()
    rewrite(path, "not: [valid")
    await watch.check()

    def count(outcome: str) -> float | None:
        return registry.get_sample_value("gpuwarden_policy_reloads_total", {"outcome": outcome})

    assert (count("applied"), count("refused")) == (1, 1)
