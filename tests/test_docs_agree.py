"""The operator documentation agrees with the code where the two have disagreed before."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    ROOT / "docs" / "operations.md",
    ROOT / "deploy" / "kubernetes" / "README.md",
    ROOT / "systemd" / "README.md",
    *sorted((ROOT / "deploy" / "kubernetes").rglob("*.yaml")),
    *sorted((ROOT / "systemd").glob("*.env")),
]


def _paragraphs(path: Path) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", path.read_text()) if p.strip()]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_says_to_restart_after_a_policy_edit(path: Path) -> None:
    # the coordinator reloads the policy file live (coordinator/policy_watch.py), a mounted
    # ConfigMap included
    for paragraph in _paragraphs(path):
        if re.search(r"(?i)\bpolic(y|ies)\b", paragraph):
            assert "rollout restart" not in paragraph, paragraph


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_dry_run_is_spelled_as_the_parser_reads_it(path: Path) -> None:
    from gpuwarden_common.flags import parse_bool  # noqa: PLC0415

    spelled = r'GPUWARDEN_DRY_RUN(?:=|`? to `"?|\s+value:\s*"?)([A-Za-z0-9]*)'
    for value in re.findall(spelled, path.read_text()):
        parse_bool(value, "GPUWARDEN_DRY_RUN")  # raises on a spelling the parser refuses


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions  # argparse has no public list of them
        for option in action.option_strings
        if option.startswith("--") and not option.startswith("--no-") and option != "--help"
    }


@pytest.mark.parametrize("command", ["agent", "coordinator"])
def test_the_readme_names_every_flag_of_each_daemon(command: str) -> None:
    readme = (ROOT / "README.md").read_text()
    if command == "agent":
        from agent.settings import build_parser  # noqa: PLC0415
    else:
        from coordinator.settings import build_parser  # noqa: PLC0415

    missing = sorted(f for f in _flags(build_parser({})) if f"`{f}`" not in readme)

    assert not missing, f"README.md does not document {missing}"
