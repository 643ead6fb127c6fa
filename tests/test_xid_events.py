"""The NVML XID event watcher, run against the fake pynvml module."""

from __future__ import annotations

import ctypes
import queue
from collections.abc import Iterator

import pynvml
import pytest

from agent.sample import XidEvent
from agent.sim.fake_pynvml import FakeNvml
from agent.xid_events import XidEventWatcher, handle_key

WAIT_S = 10  # an upper bound for "it arrives", never a speed requirement


class Recorder:
    def __init__(self) -> None:
        self.xids: queue.Queue[XidEvent] = queue.Queue()
        self.lost: queue.Queue[tuple[int | None, str]] = queue.Queue()
        self.unsupported: list[tuple[int, str]] = []

    def on_xid(self, event: XidEvent) -> None:
        self.xids.put(event)

    def on_lost(self, index: int | None, error: str) -> None:
        self.lost.put((index, error))

    def on_unsupported(self, index: int, reason: str) -> None:
        self.unsupported.append((index, reason))


@pytest.fixture
def fake() -> FakeNvml:
    return FakeNvml(gpus=4)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watcher(fake: FakeNvml, recorder: Recorder) -> Iterator[XidEventWatcher]:
    w = XidEventWatcher(
        fake,
        recorder.on_xid,
        recorder.on_lost,
        on_unsupported=recorder.on_unsupported,
        timeout_ms=50,
        recheck_lost_s=0.0,
    )
    w.start()
    yield w
    w.stop()


def test_an_injected_xid_79_reaches_on_xid_with_its_gpu_and_source(
    fake: FakeNvml, recorder: Recorder, watcher: XidEventWatcher
) -> None:
    fake.inject(2, "xid", xid=79)

    event = recorder.xids.get(timeout=WAIT_S)

    assert (event.xid, event.gpu_index, event.source) == (79, 2, "nvml")
    assert event.pci_bus_id == "00000000:75:00.0"
    assert event.gpu_uuid is not None and event.gpu_uuid.startswith("GPU-")


def test_xid_0_is_ignored(fake: FakeNvml, recorder: Recorder, watcher: XidEventWatcher) -> None:
    fake.inject(1, "xid", xid=0)
    fake.inject(1, "xid", xid=31)

    # events arrive in order: had XID 0 been passed on, it would come first
    assert recorder.xids.get(timeout=WAIT_S).xid == 31


def test_events_can_be_tagged_as_simulated(fake: FakeNvml, recorder: Recorder) -> None:
    w = XidEventWatcher(fake, recorder.on_xid, recorder.on_lost, timeout_ms=50, source="sim")
    w.start()
    try:
        fake.inject(0, "xid", xid=48)
        assert recorder.xids.get(timeout=WAIT_S).source == "sim"
    finally:
        w.stop()


def test_stop_ends_the_thread_and_releases_nvml(fake: FakeNvml, watcher: XidEventWatcher) -> None:
    watcher.stop()

    assert not watcher.running
    # the event set is freed only once the thread has left its wait
    assert fake.calls["nvmlEventSetFree"] == 1
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_a_gpu_lost_during_the_wait_is_reported_by_index(
    fake: FakeNvml, recorder: Recorder, watcher: XidEventWatcher
) -> None:
    fake.inject(3, "gpu_lost")

    index, error = recorder.lost.get(timeout=WAIT_S)

    assert index == 3
    assert "lost" in error.lower()


def test_xids_of_other_gpus_still_arrive_after_one_is_lost(
    fake: FakeNvml, recorder: Recorder, watcher: XidEventWatcher
) -> None:
    fake.inject(3, "gpu_lost")
    recorder.lost.get(timeout=WAIT_S)

    fake.inject(0, "xid", xid=94)

    assert recorder.xids.get(timeout=WAIT_S).gpu_index == 0
    assert 3 not in watcher.registered
    assert recorder.lost.empty()  # the loss was reported once, not on every wait


def test_a_lost_gpu_that_comes_back_delivers_xids_again(
    fake: FakeNvml, recorder: Recorder, watcher: XidEventWatcher
) -> None:
    fake.inject(3, "gpu_lost")
    recorder.lost.get(timeout=WAIT_S)
    fake.inject(3, "clear")

    # re-registration happens on the watcher's thread; keep injecting until one lands
    event: XidEvent | None = None
    for _ in range(WAIT_S * 10):
        fake.inject(3, "xid", xid=13)
        try:
            event = recorder.xids.get(timeout=0.1)
            break
        except queue.Empty:
            continue

    assert event is not None and event.gpu_index == 3


def test_a_gpu_without_xid_event_support_is_reported_and_skipped(recorder: Recorder) -> None:
    fake = FakeNvml(gpus=2)
    fake.set_unsupported(["nvmlDeviceRegisterEvents"])
    w = XidEventWatcher(
        fake, recorder.on_xid, recorder.on_lost, on_unsupported=recorder.on_unsupported
    )
    assert w.start()
    try:
        assert [index for index, _ in recorder.unsupported] == [0, 1]
        assert "not supported" in recorder.unsupported[0][1]
        assert w.registered == ()
    finally:
        w.stop()


def test_a_failing_callback_does_not_stop_the_watcher(fake: FakeNvml, recorder: Recorder) -> None:
    calls: list[int] = []

    def flaky(event: XidEvent) -> None:
        calls.append(event.xid)
        if len(calls) == 1:
            raise RuntimeError("consumer bug")
        recorder.on_xid(event)

    w = XidEventWatcher(fake, flaky, recorder.on_lost, timeout_ms=50)
    w.start()
    try:
        fake.inject(0, "xid", xid=13)
        fake.inject(0, "xid", xid=31)
        assert recorder.xids.get(timeout=WAIT_S).xid == 31
    finally:
        w.stop()


def test_without_nvml_the_watcher_stays_off_and_says_so(recorder: Recorder) -> None:
    w = XidEventWatcher(FakeNvml(fail_init=True), recorder.on_xid, recorder.on_lost)

    assert w.start() is False
    assert not w.running


def test_without_event_sets_the_watcher_stays_off_and_releases_nvml(recorder: Recorder) -> None:
    fake = FakeNvml(gpus=1)
    fake.set_missing(["nvmlEventSetCreate"])
    w = XidEventWatcher(fake, recorder.on_xid, recorder.on_lost)

    assert w.start() is False
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_two_ctypes_handles_to_the_same_device_share_a_key() -> None:
    device = pynvml.struct_c_nvmlDevice_t()
    first = ctypes.pointer(device)
    second = ctypes.cast(ctypes.addressof(device), pynvml.c_nvmlDevice_t)

    assert first is not second
    assert handle_key(first) == handle_key(second)
