"""Scenario files for the simulated backend, their player, and the fake's fault controls."""

from __future__ import annotations

import threading
from pathlib import Path

import pynvml
import pytest

from agent.sim import FAULT_KINDS, FakeNvml, ScenarioError, ScenarioPlayer, ScenarioStep
from agent.sim import load_scenario as load

WAIT_S = 10  # an upper bound for "it happened", never a speed requirement


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


# -- loading --------------------------------------------------------------------------------


def test_a_good_file_parses_into_steps_sorted_by_time(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
- {at: 30, gpu: 3, fault: clear}
- {at: 5, gpu: 3, fault: xid, xid: 79}
- {at: 5.5, gpu: 3, fault: gpu_lost}
""",
    )

    assert load(path) == [
        ScenarioStep(at=5.0, gpu=3, fault="xid", xid=79),
        ScenarioStep(at=5.5, gpu=3, fault="gpu_lost"),
        ScenarioStep(at=30.0, gpu=3, fault="clear"),
    ]


def test_every_fault_kind_of_the_fake_is_accepted(tmp_path: Path) -> None:
    lines = [
        f"- {{at: {i}, gpu: 0, fault: {kind}{', xid: 79' if kind == 'xid' else ''}}}"
        for i, kind in enumerate(FAULT_KINDS)
    ]

    assert [s.fault for s in load(_write(tmp_path, "\n".join(lines)))] == list(FAULT_KINDS)


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ("{gpu: 0, fault: thermal}", "at"),
        ("{at: -1, gpu: 0, fault: thermal}", "at"),
        ("{at: soon, gpu: 0, fault: thermal}", "at"),
        ("{at: 1, fault: thermal}", "gpu"),
        ("{at: 1, gpu: -2, fault: thermal}", "gpu"),
        ("{at: 1, gpu: true, fault: thermal}", "gpu"),
        ("{at: 1, gpu: 8, fault: thermal}", "gpu"),
        ("{at: 1, gpu: 0}", "fault"),
        ("{at: 1, gpu: 0, fault: meltdown}", "fault"),
        ("{at: 1, gpu: 0, fault: xid}", "xid"),
        ("{at: 1, gpu: 0, fault: xid, xid: 0}", "xid"),
        ("{at: 1, gpu: 0, fault: thermal, xid: 79}", "xid"),
        ("{at: 1, gpu: 0, fault: thermal, when: now}", "when"),
    ],
)
def test_a_bad_step_names_the_file_the_step_and_the_field(
    tmp_path: Path, step: str, field: str
) -> None:
    path = _write(tmp_path, f"- {{at: 0, gpu: 0, fault: clear}}\n- {step}\n")

    with pytest.raises(ScenarioError) as raised:
        load(path, gpu_count=8)

    message = str(raised.value)
    assert str(path) in message
    assert "step 2" in message
    assert f"field '{field}'" in message


def test_a_step_that_is_not_a_mapping_names_its_step(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="step 1: expected a mapping"):
        load(_write(tmp_path, "- thermal on gpu 0\n"))


def test_a_file_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="expected a list of steps"):
        load(_write(tmp_path, "at: 1\ngpu: 0\nfault: thermal\n"))


def test_invalid_yaml_is_refused_with_the_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "- {at: 1, gpu: 0\n")

    with pytest.raises(ScenarioError, match="not valid YAML") as raised:
        load(path)

    assert str(path) in str(raised.value)


def test_a_missing_file_is_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"absent\.yaml: cannot read"):
        load(tmp_path / "absent.yaml")


# -- playing --------------------------------------------------------------------------------


def test_the_player_applies_a_due_step_and_holds_back_a_later_one() -> None:
    fake = FakeNvml(gpus=4)
    applied = threading.Event()
    player = ScenarioPlayer(
        fake,
        [
            ScenarioStep(at=0.01, gpu=2, fault="thermal"),
            ScenarioStep(at=3600, gpu=2, fault="gpu_lost"),
        ],
        on_step=lambda step: applied.set(),
    )
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(2)

    player.start()
    try:
        assert applied.wait(WAIT_S)
        assert fake.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU) >= 90
        assert not player.wait(0)  # the hour-later step is still pending
    finally:
        player.stop()

    fake.nvmlDeviceGetUUID(handle)  # GPU 2 was never lost


def test_the_player_reports_done_after_the_last_step() -> None:
    fake = FakeNvml(gpus=1)
    player = ScenarioPlayer(fake, [ScenarioStep(at=0, gpu=0, fault="xid", xid=79)])

    player.start()
    try:
        assert player.wait(WAIT_S)
    finally:
        player.stop()


def test_a_step_the_fake_refuses_does_not_stop_the_rest() -> None:
    fake = FakeNvml(gpus=1)
    done = threading.Event()
    player = ScenarioPlayer(
        fake,
        [ScenarioStep(at=0, gpu=5, fault="thermal"), ScenarioStep(at=0, gpu=0, fault="thermal")],
        on_step=lambda step: done.set(),
    )

    player.start()
    try:
        assert done.wait(WAIT_S)
    finally:
        player.stop()


# -- the fake's own contract ----------------------------------------------------------------


def test_the_fake_shares_pynvmls_error_classes_and_constants() -> None:
    fake = FakeNvml()

    assert fake.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost
    assert fake.NVML_FI_DEV_ECC_DBE_VOL_TOTAL == pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL


def test_the_fake_does_not_pass_unsimulated_functions_through_to_the_real_library() -> None:
    assert not hasattr(FakeNvml(), "nvmlDeviceGetBAR1MemoryInfo")


def test_the_fake_refuses_an_unknown_fault_kind() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FakeNvml().inject(0, "meltdown")


def test_the_fake_gives_the_same_uuids_for_the_same_seed() -> None:
    def uuids(seed: int) -> list[str]:
        fake = FakeNvml(gpus=3, seed=seed)
        fake.nvmlInit()
        return [fake.nvmlDeviceGetUUID(fake.nvmlDeviceGetHandleByIndex(i)) for i in range(3)]

    assert uuids(1) == uuids(1)
    assert uuids(1) != uuids(2)
