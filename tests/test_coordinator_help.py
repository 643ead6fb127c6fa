"""``gpuwarden coordinator --help``: every flag says what it does and what it defaults to."""

from __future__ import annotations

import argparse

import pytest

from coordinator.settings import build_parser


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize(
    "action", _options(build_parser({})), ids=lambda a: a.option_strings[0]
)
def test_every_coordinator_flag_has_a_meaning_and_a_default_in_help(
    action: argparse.Action,
) -> None:
    assert action.help, f"{action.option_strings[0]} has no help"
    meaning, _, default = action.help.rpartition("(default")
    assert meaning.strip(), f"{action.option_strings[0]}: only a default, no meaning"
    assert default, f"{action.option_strings[0]}: help names no default: {action.help!r}"


def test_help_shows_no_secret_from_the_environment() -> None:
    env = {"GPUWARDEN_PASSWORD": "s3cret-pa55", "GPUWARDEN_USERNAME": "u"}
    text = build_parser(env).format_help()
    assert "s3cret-pa55" not in text
