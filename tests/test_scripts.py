"""``make demo`` and ``make test`` as a newcomer runs them: scripts/setup.sh and
scripts/test.sh in a copy of the checkout whose .venv tools are stand-ins that record calls."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "$(dirname "$0")/../calls"
echo "RAN $(basename "$0") $*"
"""


def checkout(tmp_path: Path) -> Path:
    """The scripts and pyproject.toml, with a .venv whose python, ruff and mypy record."""
    (tmp_path / "scripts").mkdir()
    for script in ("setup.sh", "test.sh"):
        shutil.copy2(ROOT / "scripts" / script, tmp_path / "scripts" / script)
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "ruff", "mypy"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    return tmp_path


def run(repo: Path, script: str) -> str:
    done = subprocess.run([repo / "scripts" / script], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    return done.stdout


def pip_runs(repo: Path) -> int:
    calls = repo / ".venv" / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    return sum(1 for line in lines if "-m pip install" in line)


def test_setup_runs_pip_once_and_not_again_while_pyproject_is_unchanged(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    run(repo, "setup.sh")
    again = run(repo, "setup.sh")
    assert pip_runs(repo) == 1
    assert "up to date with pyproject.toml" in again


def test_setup_runs_pip_again_when_pyproject_changes(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    run(repo, "setup.sh")
    with (repo / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency, say\n")
    run(repo, "setup.sh")
    assert pip_runs(repo) == 2


def test_setup_names_the_packages_before_pip_installs_them(tmp_path: Path) -> None:
    lines = run(checkout(tmp_path), "setup.sh").splitlines()
    said = next(i for i, line in enumerate(lines) if "with: " in line)
    ran = next(i for i, line in enumerate(lines) if line.startswith("RAN python -m pip"))
    assert said < ran
    assert "aiomqtt" in lines[said] and "pytest" in lines[said] and "mypy" in lines[said]


def test_make_test_says_what_it_will_install_before_anything_runs(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    # setup.sh would install what is missing for real, check-install.sh build wheels: stand-ins
    # record them instead
    for script in ("setup.sh", "check-install.sh"):
        (repo / "scripts" / script).write_text(RECORDER.replace("/..", "/../.venv"))
        (repo / "scripts" / script).chmod(0o755)
    lines = run(repo, "test.sh").splitlines()
    first = lines[0]
    assert lines[1].startswith("RAN setup.sh")
    assert first.startswith("==> make test will install: apt")
    assert "pip: gpuwarden and its test tools into .venv" in first
