"""MarkQueue: one wish per node, one attempt in flight per node, backoff from the failure."""

from __future__ import annotations

from coordinator.actuators import MarkFact, NodeMark
from coordinator.convergence import MarkQueue, MarkWork


def work(node: str = "gpu-1", mark: NodeMark = NodeMark.PENDING_REBOOT) -> MarkWork:
    return MarkWork(node, mark, MarkFact("GPUFault", "XID 79"))


def queue() -> MarkQueue:
    return MarkQueue(retry_base_s=4.0, retry_cap_s=60.0, rand=lambda: 0.0)


def test_a_failed_attempt_waits_its_backoff_from_when_it_failed() -> None:
    q = queue()
    w = work()
    q.want(w)
    assert q.start(w)

    retry_at = q.finish(w, ok=False, now=130.0, detail="timeout")

    assert retry_at == 132.0  # half of the 4 s base, with no jitter, after the failure
    assert q.due(131.9) == []
    assert q.due(132.0) == [w]


def test_the_backoff_grows_with_each_failure() -> None:
    q = queue()
    w = work()
    q.want(w)
    delays = []
    for now in (0.0, 100.0, 200.0):
        q.start(w)
        retry_at = q.finish(w, ok=False, now=now)
        assert retry_at is not None
        delays.append(retry_at - now)

    assert delays == [2.0, 4.0, 8.0]


def test_only_one_attempt_per_node_runs_at_a_time() -> None:
    q = queue()
    w = work()
    q.want(w)

    assert q.start(w)
    assert not q.start(w)
    assert q.due(0.0) == []


def test_a_newer_wish_replaces_the_old_and_the_old_attempt_cannot_close_it() -> None:
    q = queue()
    old, new = work(), work(mark=NodeMark.PENDING_REPLACEMENT)
    q.want(old)
    q.start(old)
    q.want(new)

    assert q.finish(old, ok=True, now=1.0) is None
    assert q.get("gpu-1") is new
    assert q.due(1.0) == [new]


def test_success_ends_the_work() -> None:
    q = queue()
    w = work()
    q.want(w)
    q.start(w)

    q.finish(w, ok=True, now=1.0)

    assert len(q) == 0


def test_an_abandoned_attempt_keeps_the_work_for_later() -> None:
    q = queue()
    w = work()
    q.want(w)
    q.start(w)

    q.abandon(w)

    assert q.due(0.0) == [w]
