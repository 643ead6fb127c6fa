"""``gpuwarden policy check`` and the coordinator's refusal of a bad ``--policy`` at start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from coordinator import cli
from coordinator.__main__ import main as coordinator_main

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
admission: task-ranking
priorityClasses:
  - {name: inference, weight: 100}
  - {name: training, weight: 70}
teams:
  - {name: research, namespace: research, quota: {gpus: 16}}
  - {name: vision, namespace: vision, quota: {gpus: 8}, lending: lend}
"""

BAD = """\
teams:
  - {name: research, namespace: research, quota: {gpus: 16}, borowLimitPercent: 20}
  - {name: vision, namespace: vision, quota: {gpus: 8}, borrowLimitPercent: 900}
"""


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def test_a_valid_policy_passes_the_check_with_a_summary(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["policy", "check", str(good)])

    assert code == 0
    assert capsys.readouterr().out == (
        f"{good}: ok: 2 teams guaranteed 24 GPUs, 2 priority classes, admission task-ranking, "
        "idle compute fair-share\n"
    )


def test_a_bad_policy_prints_each_field_and_reason_and_exits_non_zero(
    bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["policy", "check", str(bad)])

    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{bad}: teams[0].borowLimitPercent: unknown field; did you mean 'borrowLimitPercent'?",
        f"{bad}: teams[1].borrowLimitPercent: Input should be less than or equal to 500 (got 900)",
    ]


def test_checking_several_files_fails_when_any_is_bad_and_reports_the_good_ones(
    good: Path, bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["policy", "check", str(good), str(bad)])

    assert code == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: ok:")
    assert err.startswith(f"{bad}: ")


def test_a_missing_file_is_reported_as_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"

    code = cli.main(["policy", "check", str(missing)])

    assert code == 1
    assert (
        capsys.readouterr().err == f"{missing}: cannot read the file: No such file or directory\n"
    )


def test_policy_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["policy"])

    assert exited.value.code == 2
    assert "usage: gpuwarden policy" in capsys.readouterr().err


def test_the_example_policy_passes_the_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "check", str(REPO / "examples" / "policy.yaml")]) == 0


def test_gpuwarden_checkpoint_is_the_checkpoint_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["checkpoint", "--help"])

    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: gpuwarden checkpoint")


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """``main`` configures structlog for the process, onto this test's captured stderr; the
    tests after it must not log into that closed stream."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("keep_logging")
def test_the_coordinator_refuses_a_bad_policy_at_start_with_one_line(
    bad: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--policy", str(bad), "--state", str(tmp_path / "state"), "--http", "off"]

    code = coordinator_main(argv, prog="gpuwarden coordinator")

    assert code == 2
    assert capsys.readouterr().err == (
        f"gpuwarden coordinator: --policy {bad}: "
        "teams[0].borowLimitPercent: unknown field; did you mean 'borrowLimitPercent'?; "
        "teams[1].borrowLimitPercent: Input should be less than or equal to 500 (got 900)\n"
    )
    assert not (tmp_path / "state").exists()  # refused before anything started
