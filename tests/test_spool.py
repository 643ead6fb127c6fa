from __future__ import annotations

from pathlib import Path

import pytest

from agent.spool import DirectorySpool, MemorySpool, Spool


@pytest.fixture(params=["memory", "directory"])
def spool(request: pytest.FixtureRequest, tmp_path: Path) -> Spool:
    if request.param == "memory":
        return MemorySpool(max_events=3)
    return DirectorySpool(tmp_path / "spool", max_events=3, fsync=False)


def test_events_come_out_in_the_order_they_went_in(spool: Spool) -> None:
    for i in range(3):
        spool.append("t", f"e{i}".encode())
    seen = []
    while (item := spool.peek()) is not None:
        seen.append(item.payload)
        spool.ack(item.key)
    assert seen == [b"e0", b"e1", b"e2"]


def test_an_event_stays_until_it_is_acknowledged(spool: Spool) -> None:
    spool.append("t", b"e0")
    first = spool.peek()
    assert first is not None
    assert spool.peek() == first
    assert len(spool) == 1


def test_a_full_spool_drops_the_oldest_and_counts_it(spool: Spool) -> None:
    for i in range(5):
        spool.append("t", f"e{i}".encode())
    assert len(spool) == 3
    assert spool.dropped == 2
    item = spool.peek()
    assert item is not None and item.payload == b"e2"


def test_directory_spool_survives_an_agent_restart_in_order(tmp_path: Path) -> None:
    first = DirectorySpool(tmp_path / "s", fsync=False)
    first.append("gpuwarden/v1/c/nodes/n/events", b"a")
    first.append("gpuwarden/v1/c/nodes/n/events", b"b")
    second = DirectorySpool(tmp_path / "s", fsync=False)
    item = second.peek()
    assert item is not None
    assert (item.topic, item.payload) == ("gpuwarden/v1/c/nodes/n/events", b"a")
    second.ack(item.key)
    second.append("gpuwarden/v1/c/nodes/n/events", b"c")
    rest = []
    while (nxt := second.peek()) is not None:
        rest.append(nxt.payload)
        second.ack(nxt.key)
    assert rest == [b"b", b"c"]


def test_directory_spool_ignores_half_written_files_from_a_crash(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "00000000000000000007.tmp").write_bytes(b"partial")
    spool = DirectorySpool(d, fsync=False)
    assert len(spool) == 0
    assert not (d / "00000000000000000007.tmp").exists()
