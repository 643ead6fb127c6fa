"""Boolean flags and their GPUWARDEN_* twins: the usual spellings, and nothing else."""

from __future__ import annotations

import pytest

from agent.settings import parse_settings as parse_agent_settings
from coordinator.settings import parse_settings as parse_coordinator_settings
from gpuwarden_common import flags
from gpuwarden_common.flags import SettingsError

TRUE = ["1", "true", "True", "TRUE", "yes", "Yes", "on", "ON", "y"]
FALSE = ["0", "false", "False", "no", "NO", "off", "n", ""]


@pytest.mark.parametrize("text", TRUE)
def test_the_usual_spellings_of_true_are_true(text: str) -> None:
    assert flags.parse_bool(text, "GPUWARDEN_X") is True


@pytest.mark.parametrize("text", FALSE)
def test_the_usual_spellings_of_false_are_false(text: str) -> None:
    assert flags.parse_bool(text, "GPUWARDEN_X") is False


@pytest.mark.parametrize("text", TRUE)
def test_dry_run_from_the_environment_is_on_for_every_spelling_of_true(text: str) -> None:
    assert parse_coordinator_settings([], {"GPUWARDEN_DRY_RUN": text}).dry_run is True


@pytest.mark.parametrize(
    ("parse", "variable"),
    [
        (parse_coordinator_settings, "GPUWARDEN_DRY_RUN"),
        (parse_coordinator_settings, "GPUWARDEN_EMBEDDED_BROKER"),
        (parse_agent_settings, "GPUWARDEN_ONCE"),
    ],
)
@pytest.mark.parametrize("text", ["maybe", "2", "enabled", "tru"])
def test_a_boolean_twin_that_is_no_boolean_is_refused_naming_it(
    parse: object, variable: str, text: str
) -> None:
    with pytest.raises(SettingsError, match=rf"{variable} {text!r}.*true.*false"):
        parse([], {variable: text})  # type: ignore[operator]


def test_a_flag_wins_over_its_environment_twin_both_ways() -> None:
    off = parse_coordinator_settings(["--no-dry-run"], {"GPUWARDEN_DRY_RUN": "yes"})
    on = parse_coordinator_settings(["--dry-run"], {"GPUWARDEN_DRY_RUN": "no"})
    assert (off.dry_run, on.dry_run) == (False, True)


def test_the_agent_once_twin_accepts_yes() -> None:
    assert parse_agent_settings([], {"GPUWARDEN_ONCE": "yes"}).once is True
