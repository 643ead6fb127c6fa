"""What a coordinator that (re)gains the lead believes about each node, before it acts.

Two witnesses, either of which may be behind the other:

- the audit log's latest lifecycle decision per node: written *before* its action ran, so it
  may describe marks that never reached the cluster (the action failed, or a crash cut it
  off), and after a failover it is this replica's log, which misses what the other leader
  decided meanwhile;
- the cluster's marks, with the decision behind each (:class:`~coordinator.actuators.MarkFact`
  in a node annotation): they may be half-applied, or older than the log.

:func:`plan_restore` believes the newer of the two, by decision time, and returns every node
that is out of service, and every node returned to service whose marks the cluster still
shows, with the mark and the fact that must be (re)applied: the remediator then reconciles
each of them until the cluster shows it whole. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.actuators import MarkFact, NodeFacts, NodeMark
from coordinator.audit import AuditRecord
from coordinator.lifecycle import OUT_OF_SERVICE, Lifecycle, mark_for

# what a mark found on the cluster says about the lifecycle (recovering and held nodes carry
# the plain Unschedulable mark; restoring them as unschedulable keeps them out, the safe side)
MARK_LIFECYCLE: Mapping[NodeMark, Lifecycle] = {
    NodeMark.UNSCHEDULABLE: Lifecycle.UNSCHEDULABLE,
    NodeMark.PENDING_REBOOT: Lifecycle.PENDING_REBOOT,
    NodeMark.PENDING_REPLACEMENT: Lifecycle.PENDING_REPLACEMENT,
}
RESTORED_MESSAGE = "restored from the cluster's marks after a coordinator restart"


@dataclass(frozen=True)
class Restored:
    """A node's believed lifecycle, and the mark (with its reason) it must carry: a node out
    of service, or one in service whose stale marks must go."""

    node: str
    lifecycle: Lifecycle
    since: float
    out_boot_id: str | None
    mark: NodeMark
    fact: MarkFact
    decision_id: int | None


@dataclass(frozen=True)
class _Belief:
    lifecycle: Lifecycle
    since: float
    out_boot_id: str | None
    fact: MarkFact | None
    decision_id: int | None


def is_lifecycle_decision(record: AuditRecord) -> bool:
    """A node lifecycle decision actually taken (not a task's, not a dry run's)."""
    return bool(record.node) and not record.dry_run and "target" in record.details


def decision_fact(record: AuditRecord) -> MarkFact:
    """The fact a decision minted; decisions written before facts existed get one derived
    from their row id, stable across restarts of the same replica."""
    d = record.details
    return MarkFact(
        reason=str(d.get("fact_reason") or "NodeMarkedForRecovery"),
        message=str(d.get("message") or record.reason),
        id=str(d.get("fact_id") or f"audit-{record.id}"),
        at=record.ts,
        fault=str(d.get("fault") or ""),
    )


def _from_log(record: AuditRecord) -> _Belief:
    target = Lifecycle(record.details.get("target", Lifecycle.HEALTHY.value))
    boot = record.details.get("boot_id")
    return _Belief(target, record.ts, str(boot) if boot else None, decision_fact(record),
                   record.id)  # fmt: skip


def _from_cluster(facts: NodeFacts, now: float) -> _Belief:
    lifecycle = (
        MARK_LIFECYCLE.get(facts.mark, Lifecycle.HEALTHY)
        if facts.mark is not None else Lifecycle.HEALTHY
    )  # fmt: skip
    since = facts.fact.at if facts.fact is not None else now
    return _Belief(lifecycle, since, None, facts.fact, None)


def _newer(logged: _Belief | None, seen: _Belief | None) -> _Belief | None:
    if logged is None or seen is None:
        return logged or seen
    if seen.fact is not None and logged.fact is not None and seen.fact.id == logged.fact.id:
        return logged  # the same decision; the log also knows the boot it was taken on
    if seen.fact is None:
        # marks without a recorded decision (an older gpuwarden, or a hand-made label): they
        # cannot be dated, so the log wins when it holds the node out, and the marks win
        # when the log says in service (never return to service what the cluster holds out)
        return logged if logged.lifecycle in OUT_OF_SERVICE else seen
    return seen if seen.fact.at > logged.since else logged


def plan_restore(
    decisions: Mapping[str, AuditRecord], cluster: Mapping[str, NodeFacts], now: float
) -> list[Restored]:
    """``decisions``: each node's latest lifecycle decision in this replica's log;
    ``cluster``: what the cluster says of every node that is marked, and of every node the
    log holds out of service (marked or not)."""
    restored: list[Restored] = []
    for name in sorted(set(decisions) | set(cluster)):
        record = decisions.get(name)
        facts = cluster.get(name)
        belief = _newer(
            None if record is None else _from_log(record),
            None if facts is None else _from_cluster(facts, now),
        )
        if belief is None:
            continue
        if belief.lifecycle not in OUT_OF_SERVICE:
            still_marked = facts is not None and facts.mark in MARK_LIFECYCLE
            if not still_marked or belief.fact is None:
                continue
            belief = _Belief(Lifecycle.HEALTHY, belief.since, None, belief.fact,
                             belief.decision_id)  # fmt: skip
        mark = mark_for(belief.lifecycle)
        assert mark is not None  # every state a belief can hold has its mark
        fact = belief.fact or MarkFact(reason="NodeMarkedForRecovery", message=RESTORED_MESSAGE,
                                       at=now)  # fmt: skip
        restored.append(Restored(name, belief.lifecycle, belief.since, belief.out_boot_id,
                                 mark, fact, belief.decision_id))  # fmt: skip
    return restored
