"""Recording checkpoints from inside a pod: the helper, its CLI, and the example training loop
(which resumes from its checkpoint after being stopped the way an eviction stops it)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordinator.checkpoint import (
    CheckpointError,
    PodRef,
    main,
    record_checkpoint,
    record_checkpoint_async,
    this_pod,
)
from coordinator.pods import LAST_CHECKPOINT_ANNOTATION
from tests.coordinator_harness import write_kubeconfig
from tests.fakekube import FakeKube, running_fake_kube

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "train_with_checkpoints.py"
SAVED_AT = datetime(2025, 3, 1, 12, 30, 15, tzinfo=UTC)
WAIT_S = 30.0  # bounds for subprocesses, which import the kubernetes client


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with running_fake_kube() as server:
        server.add_pod("research", "trainer-0")
        yield server


@pytest.fixture
def kube(fake: FakeKube, tmp_path: Path) -> str:
    return f"kubeconfig:{write_kubeconfig(tmp_path / 'kubeconfig', fake.url)}"


POD_ENV = {"POD_NAME": "trainer-0", "POD_NAMESPACE": "research"}


def annotation(fake: FakeKube) -> str | None:
    pod = fake.pod("research", "trainer-0")
    assert pod is not None
    return (pod["metadata"].get("annotations") or {}).get(LAST_CHECKPOINT_ANNOTATION)


# --- the helper -------------------------------------------------------------------------------


def test_this_pod_is_named_by_the_downward_api_variables() -> None:
    assert this_pod(POD_ENV) == PodRef("research", "trainer-0")


def test_a_missing_downward_api_variable_is_named_with_how_to_set_it() -> None:
    with pytest.raises(CheckpointError, match="POD_NAMESPACE not set; set them with the downward"):
        this_pod({"POD_NAME": "trainer-0"})


async def test_recording_a_checkpoint_annotates_this_pod_with_its_time(
    fake: FakeKube, kube: str
) -> None:
    recorded = await record_checkpoint_async(SAVED_AT, kube=kube, environ=POD_ENV)

    assert recorded == SAVED_AT
    assert annotation(fake) == "2025-03-01T12:30:15Z"


async def test_a_checkpoint_time_without_a_zone_is_refused(kube: str) -> None:
    with pytest.raises(CheckpointError, match="time zone"):
        await record_checkpoint_async(datetime(2025, 3, 1, 12), kube=kube, environ=POD_ENV)


async def test_recording_on_a_pod_that_is_gone_raises_saying_so(kube: str) -> None:
    with pytest.raises(CheckpointError, match="research/elsewhere"):
        await record_checkpoint_async(
            SAVED_AT, pod=PodRef("research", "elsewhere"), kube=kube, deadline_s=2
        )


async def test_the_blocking_helper_inside_an_event_loop_says_to_await_the_async_one() -> None:
    with pytest.raises(CheckpointError, match="await record_checkpoint_async"):
        record_checkpoint(SAVED_AT, environ=POD_ENV)


def test_the_blocking_helper_records_from_a_plain_training_loop(fake: FakeKube, kube: str) -> None:
    record_checkpoint(SAVED_AT.timestamp(), kube=kube, environ=POD_ENV)

    assert annotation(fake) == "2025-03-01T12:30:15Z"


# --- gpuwarden checkpoint ---------------------------------------------------------------------


def test_the_command_records_a_checkpoint_and_says_where(
    fake: FakeKube, kube: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--pod", "research/trainer-0", "--at", "2025-03-01T12:30:15Z", "--kube", kube])

    assert code == 0
    assert annotation(fake) == "2025-03-01T12:30:15Z"
    assert capsys.readouterr().out == (
        f"{LAST_CHECKPOINT_ANNOTATION}=2025-03-01T12:30:15Z on pod research/trainer-0\n"
    )


def test_the_command_outside_a_pod_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)

    code = main([], prog="gpuwarden checkpoint")

    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("gpuwarden checkpoint: POD_NAME and POD_NAMESPACE not set")
    assert err.count("\n") == 1


def test_the_command_refuses_a_time_that_is_not_rfc_3339(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--at", "yesterday"])

    assert exited.value.code == 2
    assert "not an RFC 3339 time" in capsys.readouterr().err


# --- the example training loop ----------------------------------------------------------------


def train(directory: Path, *extra: str, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--checkpoint-dir", str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=REPO,
        env=env,
        check=True,
    )
    return done.stdout.splitlines()


def test_the_example_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path,
) -> None:
    fast = ("--checkpoint-every", "20", "--step-seconds", "0")
    first = train(tmp_path / "stopped", "--steps", "70", *fast)
    resumed = train(tmp_path / "stopped", "--steps", "100", *fast)
    straight = train(tmp_path / "straight", "--steps", "100", *fast)

    assert (first[0], first[-2]) == ("starting fresh", "checkpoint at step 70")
    assert resumed[0] == "resumed from step 70"
    assert resumed[-1] == straight[-1]
    assert straight[-1].startswith("done at step 100: ")


async def test_the_example_stopped_like_an_eviction_saves_records_and_resumes(
    fake: FakeKube, kube: str, tmp_path: Path
) -> None:
    env = {**os.environ, **POD_ENV}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--checkpoint-dir", str(tmp_path), "--steps", "100000",
        "--checkpoint-every", "25", "--step-seconds", "0.002", "--kube", kube,
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(WAIT_S):
            while not any(line.startswith("checkpoint at") for line in lines):
                lines.append((await process.stdout.readline()).decode().strip())
            process.send_signal(signal.SIGTERM)  # what the kubelet does on an eviction
            rest, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines += rest.decode().splitlines()

    assert process.returncode == 0
    stopped = next(line for line in lines if line.startswith("stopped at step"))
    step = int(stopped.removeprefix("stopped at step "))
    assert f"checkpoint at step {step}" in lines
    assert annotation(fake) is not None
    resumed = train(tmp_path, "--steps", str(step), "--step-seconds", "0")
    assert resumed[0] == f"resumed from step {step}"
