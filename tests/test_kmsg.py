"""Kernel-log parsing and following."""

from __future__ import annotations

import errno
import os
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.kmsg import KernelFault, KmsgFollower, KmsgRecords, parse_kmsg_line, pci_key
from agent.sample import BusFault, XidEvent

SAMPLE = Path(__file__).parent / "data" / "kmsg_sample.txt"
NOW = 1_700_000_000.0
WAIT_S = 10  # an upper bound for "it arrives", never a speed requirement

XID_79 = (
    "NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
)


def _xid(line: str) -> XidEvent:
    event = parse_kmsg_line(line, NOW)
    assert isinstance(event, XidEvent), line
    return event


# -- the parser -----------------------------------------------------------------------------


def test_an_xid_line_gives_the_code_and_the_kernel_pci_id() -> None:
    event = _xid(XID_79)

    assert (event.xid, event.pci_bus_id, event.source) == (79, "0000:3b:00", "kmsg")
    assert event.gpu_index is None  # resolved later, by the follower
    assert event.ts == NOW
    assert event.text.startswith("Xid (PCI:0000:3b:00): 79")


def test_an_xid_line_with_a_process_gives_the_code() -> None:
    line = (
        "NVRM: Xid (PCI:0000:75:00): 13, pid=48213, name=python3, Graphics SM Warp Exception "
        "on (GPC 4, TPC 1, SM 0): Out Of Range Address"
    )

    assert _xid(line).xid == 13


def test_an_xid_line_without_pid_and_name_from_older_drivers_gives_the_code() -> None:
    assert _xid("NVRM: Xid (PCI:0000:01:00): 79, GPU has fallen off the bus.").xid == 79


def test_a_dev_kmsg_record_prefix_is_skipped() -> None:
    assert _xid(f"3,1234,8123114466,-;{XID_79}").pci_bus_id == "0000:3b:00"


def test_a_dmesg_timestamp_prefix_is_skipped() -> None:
    assert _xid(f"[11234.876543] {XID_79}").xid == 79


def test_a_journalctl_prefix_is_skipped() -> None:
    assert _xid(f"May 28 14:02:11 gpu-node-17 kernel: {XID_79}").xid == 79


def test_fallen_off_the_bus_without_an_xid_is_a_bus_fault() -> None:
    fault = parse_kmsg_line(
        "[11234.876601] NVRM: GPU 0000:53:00.0: GPU has fallen off the bus.", NOW
    )

    assert isinstance(fault, BusFault)
    assert (fault.pci_bus_id, fault.ts, fault.gpu_index) == ("0000:53:00", NOW, None)


def test_the_gpu_header_before_an_xid_is_not_a_fault() -> None:
    line = "NVRM: GPU at PCI:0000:75:00: GPU-4a8b2c1d-0e3f-5a6b-7c8d-9e0f1a2b3c4d"

    assert parse_kmsg_line(line, NOW) is None


@pytest.mark.parametrize(
    "line",
    [
        "[   12.314177] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.90.07",
        "[10877.300911] python3[60233]: segfault at 0 ip 00007f3e2c1d4a10 error 4",
        "pcieport 0000:52:00.0: AER: Uncorrected (Fatal) error received: 0000:53:00.0",
        "",
        "6,99,1,-;Xid 79 mentioned outside the driver's prefix",
    ],
)
def test_lines_that_report_no_nvidia_fault_give_none(line: str) -> None:
    assert parse_kmsg_line(line, NOW) is None


def test_xid_0_is_not_a_fault() -> None:
    assert parse_kmsg_line("NVRM: Xid (PCI:0000:3b:00): 0, pid=1, name=x, nothing", NOW) is None


def test_the_sample_log_yields_exactly_its_faults() -> None:
    faults = [parse_kmsg_line(line, NOW) for line in SAMPLE.read_text().splitlines()]

    found = [
        (type(f).__name__, f.xid if isinstance(f, XidEvent) else None, f.pci_bus_id)
        for f in faults
        if f is not None
    ]
    assert found == [
        ("XidEvent", 13, "0000:75:00"),
        ("XidEvent", 13, "0000:75:00"),
        ("XidEvent", 48, "0000:a8:00"),
        ("XidEvent", 63, "0000:a8:00"),
        ("XidEvent", 74, "0000:b9:00"),
        ("XidEvent", 79, "0000:53:00"),
        ("BusFault", None, "0000:53:00"),
        ("XidEvent", 94, "0000:ca:00"),
        ("XidEvent", 119, "0000:86:00"),
        ("XidEvent", 31, "0000:64:00"),
    ]


@pytest.mark.parametrize(
    "spelling", ["0000:3b:00", "00000000:3B:00.0", "0000:3B:00.0", "PCI:0000:3b:00", "0:3b:0"]
)
def test_kernel_and_nvml_pci_spellings_share_one_key(spelling: str) -> None:
    assert pci_key(spelling) == "0000:3b:00"


def test_a_string_that_is_no_pci_address_has_no_key() -> None:
    assert pci_key("GPU-4a8b2c1d") is None


# -- /dev/kmsg records ----------------------------------------------------------------------


def test_a_ring_buffer_overrun_is_skipped_and_reading_goes_on() -> None:
    readable, writer = os.pipe()
    os.write(writer, b"x")  # only makes select() report the descriptor readable
    replies: list[bytes | OSError] = [
        OSError(errno.EPIPE, "Broken pipe"),
        f"3,1234,8123114466,-;{XID_79}\n SUBSYSTEM=pci\n".encode(),
        BlockingIOError(errno.EAGAIN, "again"),
    ]

    def read(fd: int, size: int) -> bytes:
        reply = replies.pop(0)
        if isinstance(reply, OSError):
            raise reply
        return reply

    records = KmsgRecords(readable, read=read)
    try:
        lines = records.lines(timeout_s=WAIT_S)
    finally:
        records.close()
        os.close(writer)

    assert lines == [f"3,1234,8123114466,-;{XID_79}"]


# -- the follower ---------------------------------------------------------------------------


@pytest.fixture
def faults() -> queue.Queue[KernelFault]:
    return queue.Queue()


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "kern.log"
    path.write_text(f"[100.0] {XID_79.replace('79', '48', 1)}\n")
    return path


@pytest.fixture
def follower(log_file: Path, faults: queue.Queue[KernelFault]) -> Iterator[KmsgFollower]:
    f = KmsgFollower(
        faults.put,
        {"0000:3b:00": 5}.get,
        str(log_file),
        poll_interval_s=0.01,
        clock=lambda: NOW,
    )
    assert f.start()
    yield f
    f.stop()


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_the_follower_sees_only_lines_appended_after_it_started(
    log_file: Path, faults: queue.Queue[KernelFault], follower: KmsgFollower
) -> None:
    _append(log_file, f"[200.0] {XID_79}\n")

    # the XID 48 already in the file would have come first had it been read
    assert _only_xid(faults.get(timeout=WAIT_S)) == 79


def test_the_follower_resolves_the_gpu_index_from_the_pci_id(
    log_file: Path, faults: queue.Queue[KernelFault], follower: KmsgFollower
) -> None:
    _append(log_file, f"[200.0] {XID_79}\n")

    assert faults.get(timeout=WAIT_S).gpu_index == 5


def test_the_follower_waits_for_the_end_of_a_partly_written_line(
    log_file: Path, faults: queue.Queue[KernelFault], follower: KmsgFollower
) -> None:
    half = XID_79.index(": 79") + 3  # "...: 7" then "9, ...": a torn read would say XID 7
    _append(log_file, XID_79[:half])
    _append(log_file, XID_79[half:] + "\n")

    assert _only_xid(faults.get(timeout=WAIT_S)) == 79


def test_a_missing_path_leaves_the_follower_off(tmp_path: Path) -> None:
    follower = KmsgFollower(lambda fault: None, lambda pci: None, str(tmp_path / "absent"))

    assert follower.start() is False
    assert not follower.running


def _only_xid(fault: KernelFault) -> int:
    assert isinstance(fault, XidEvent)
    return fault.xid
