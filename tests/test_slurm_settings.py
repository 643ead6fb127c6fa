"""Choosing the back end and configuring Slurm's: ``--backend`` with ``--kube`` still working,
the ``--slurm-*`` flags, the node name map, and a command runner that never hangs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordinator.backends.slurm import SlurmSetupError, build
from coordinator.backends.slurm.commands import SlurmCommands, SlurmUnavailable
from coordinator.backends.slurm.names import NodeMapError, NodeNames
from coordinator.backends.slurm.nodes import RebootMode
from coordinator.settings import CoordinatorSettings, SettingsError, parse_settings


def parse(*argv: str, env: dict[str, str] | None = None) -> CoordinatorSettings:
    return parse_settings(["--state", "/tmp/gpuwarden-test", *argv], env or {})


# --- which back end ---------------------------------------------------------------------------


def test_without_flags_the_back_end_is_local() -> None:
    assert parse().backend == "local"


def test_kube_alone_still_chooses_kubernetes() -> None:
    settings = parse("--kube", "in-cluster")
    assert (settings.backend, settings.kube) == ("kubernetes", "in-cluster")


def test_backend_wins_over_kube() -> None:
    assert parse("--kube", "auto", "--backend", "slurm").backend == "slurm"
    assert parse("--kube", "in-cluster", "--backend", "local").backend == "local"


def test_backend_kubernetes_with_kube_off_finds_the_cluster_itself() -> None:
    settings = parse("--backend", "kubernetes")
    assert (settings.backend, settings.kube) == ("kubernetes", "auto")


def test_the_backend_has_an_environment_twin() -> None:
    assert parse(env={"GPUWARDEN_BACKEND": "slurm"}).backend == "slurm"


def test_an_unknown_backend_is_refused_naming_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse("--backend", "pbs")
    assert "choose from 'kubernetes', 'slurm', 'local'" in capsys.readouterr().err


# --- the Slurm flags --------------------------------------------------------------------------


def test_slurm_defaults_signal_usr1_and_reboot_nothing() -> None:
    slurm = parse("--backend", "slurm").slurm
    assert (slurm.requeue_signal, slurm.requeue_grace_s, slurm.max_requeues, slurm.reboot) == (
        "USR1", 60.0, 3, RebootMode.OFF
    )


def test_slurm_flags_are_read(tmp_path: Path) -> None:
    slurm = parse("--backend", "slurm", "--slurm-bin", str(tmp_path), "--slurm-reboot", "down",
                  "--slurm-requeue-signal", "SIGTERM", "--slurm-requeue-grace", "0",
                  "--slurm-max-requeues", "5", "--slurm-timeout", "2.5").slurm  # fmt: skip
    assert (slurm.bin_dir, slurm.reboot, slurm.requeue_signal, slurm.requeue_grace_s,
            slurm.max_requeues, slurm.timeout_s) == (
        tmp_path, RebootMode.DOWN, "TERM", 0.0, 5, 2.5
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "advice"),
    [(("--slurm-bin", "/no/such/dir"), "give the directory that holds scontrol"),
     (("--slurm-requeue-signal", "CHECKPOINT"), "give a name such as USR1"),
     (("--slurm-requeue-signal", "KILL"), "cannot catch it"),
     (("--slurm-requeue-grace", "-1"), "0 or more"),
     (("--slurm-max-requeues", "two"), "a whole number")],
)  # fmt: skip
def test_a_bad_slurm_flag_says_what_to_give(flags: tuple[str, str], advice: str) -> None:
    with pytest.raises(SettingsError, match=advice):
        parse("--backend", "slurm", *flags)


def test_slurm_flags_are_not_checked_for_another_back_end() -> None:
    assert parse("--slurm-bin", "/no/such/dir").backend == "local"


def test_missing_slurm_commands_stop_the_start_with_what_to_install(tmp_path: Path) -> None:
    settings = parse("--backend", "slurm", "--slurm-bin", str(tmp_path))
    with pytest.raises(SlurmSetupError, match="apt-get install slurm-client"):
        build(settings.slurm, audit=None, actor="c", dry_run=False)  # type: ignore[arg-type]


# --- node names -------------------------------------------------------------------------------


def test_names_are_the_same_unless_the_map_says_otherwise() -> None:
    names = NodeNames({"gpu-a-001.cluster.internal": "a001"})
    assert names.slurm("gpu-a-001.cluster.internal") == "a001"
    assert names.agent("a001") == "gpu-a-001.cluster.internal"
    assert (names.slurm("node7"), names.agent("node7")) == ("node7", "node7")


def test_the_map_file_is_yaml_lines(tmp_path: Path) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("# agent: slurm\ngpu-a-001: a001\ngpu-a-002: a002\n")
    assert NodeNames.load(path).slurm("gpu-a-002") == "a002"


@pytest.mark.parametrize(
    ("text", "advice"),
    [("[a, b]\n", "expected 'agent-name: slurm-name' lines"),
     ("a: x\nb: x\n", "two agent names map to one Slurm node"),
     ("a: [\n", "not YAML")],
)  # fmt: skip
def test_a_bad_map_file_says_what_is_wrong(tmp_path: Path, text: str, advice: str) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text(text)
    with pytest.raises(NodeMapError, match=advice):
        NodeNames.load(path)


# --- running commands -------------------------------------------------------------------------


def fake_program(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


async def test_a_command_that_hangs_is_unavailable_after_its_deadline(tmp_path: Path) -> None:
    fake_program(tmp_path, "scontrol", "exec sleep 30\n")
    commands = SlurmCommands(bin_dir=tmp_path, timeout_s=0.3)
    with pytest.raises(SlurmUnavailable, match=r"no answer within 0\.3s \(is slurmctld up\?\)"):
        await commands.run("scontrol", "ping")


async def test_a_failing_command_is_a_result_with_its_error(tmp_path: Path) -> None:
    fake_program(tmp_path, "scontrol", "echo 'Unable to contact slurm controller' >&2; exit 1\n")
    result = await SlurmCommands(bin_dir=tmp_path).run("scontrol", "update")
    assert (result.ok, result.error) == (False, "Unable to contact slurm controller")


async def test_commands_talk_to_the_configured_controller(tmp_path: Path) -> None:
    fake_program(tmp_path, "sinfo", 'echo "$SLURM_CONF"\n')
    conf = tmp_path / "slurm.conf"
    result = await SlurmCommands(bin_dir=tmp_path, conf=conf, environ=os.environ).run("sinfo")
    assert result.stdout.strip() == str(conf)


async def test_a_missing_program_says_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(SlurmUnavailable, match=f"squeue not found in {tmp_path}"):
        await SlurmCommands(bin_dir=tmp_path).run("squeue", "--json")
