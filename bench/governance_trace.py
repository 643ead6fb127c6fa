"""A simulated week of a 512-GPU cluster (64 nodes x 8 GPUs), four teams, node faults.

Runs the same workload (same seed) under five policies and prints one table:

- governed:  lending and borrowing, fair-share, checkpoint-aware victim choice, and capacity
  held for a task that waited past reservation.afterWaitSeconds (the default, 1 h);
- best-effort: governed without that reservation (a task that does not fit is skipped and
  smaller ones behind it go, however long it waits: Kueue's BestEffortFIFO);
- kueue-order: governed, but victims chosen in Kueue's order (priority, then most
  recently admitted) instead of by least work lost;
- fcfs-idle: governed, but idle GPUs handed out first-come-first-serve;
- static:    every team confined to its quota (no lending, no borrowing).

Figures: GPU utilization (running GPU-time over healthy GPU-time) and goodput (less the work
thrown away), mean and p95 wait (arrival to first start) per priority class, GPU-hours lost
to faults and to preemption, and for gangs (tasks of more than one pod) that fit their
team's quota the worst wait, and the worst time spent as the next task of its team's queue
(what a reservation bounds: the wait behind tasks of higher standing is the queue's, not
starvation), averaged over a few seeds.
Usage: ``python bench/governance_trace.py [--seeds N] [--days D]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.governance.policy import (
    IdleComputeAllocation,
    Lending,
    Policy,
    VictimOrder,
    parse_policy,
)
from coordinator.governance.ranking import Priorities, sort_queue
from coordinator.governance.simcluster import ClassStats, SimCluster, SimReport
from coordinator.governance.tasks import GovernanceState, Task
from coordinator.governance.workload import Workload, parse_workload

POLICY = """
admission: task-ranking
idleCompute: fair-share
priorityClasses:
  - {name: inference, weight: 100}
  - {name: experimentation, weight: 80}
  - {name: training, weight: 70}
  - {name: fine-tuning, weight: 60}
preemption: {defaultGraceSeconds: 60, agingBoostPerPreemption: 5, agingMaxBoost: 20}
requeue: {maxRequeues: 3, backoffSeconds: 60, backoffMaxSeconds: 1800}
teams:
  - {name: research, namespace: research, quota: {gpus: 192}, borrowLimitPercent: 100,
     fairShareWeight: 40, preemptLowerPriority: true}
  - {name: serving, namespace: serving, quota: {gpus: 128}, lending: lend,
     preemptLowerPriority: true}
  - {name: vision, namespace: vision, quota: {gpus: 128}, borrowLimitPercent: 100,
     fairShareWeight: 30}
  - {name: nlp, namespace: nlp, quota: {gpus: 64}, borrowLimitPercent: 200,
     fairShareWeight: 30}
"""


def workload_text(days: float, seed: int) -> str:
    """About 95% of the cluster's GPU-hours offered, unevenly: each team is busy at other
    times (the HyperPod talk's "spiky demand"), so static quotas leave GPUs idle while
    tasks wait. Checkpoint intervals differ, so which victim is chosen matters."""
    week, half = f"{days}d", f"{days / 2}d"
    return f"""
seed: {seed}
cluster: {{nodes: 64, gpusPerNode: 8}}
randomFaults: {{mtbf: 250h, repair: 4h}}
streams:
  # research: experiments all week; heavy training gangs in the first half
  - {{team: research, priorityClass: experimentation, every: 20m, until: {week},
     gpus: [1, 2, 4, 8], size: [1, 2], duration: [20m, 4h], checkpointInterval: 15m}}
  - {{team: research, priorityClass: training, every: 90m, until: {half},
     gpus: [8], size: [2, 4, 8], duration: [4h, 30h], checkpointInterval: 1h}}
  # serving: inference bursts on days 2-3 and 5, idle otherwise (it lends)
  - {{team: serving, priorityClass: inference, every: 45m, from: 1d, until: 3d,
     gpus: [8], size: [1, 2, 4], duration: [2h, 10h], checkpointOnPreempt: true}}
  - {{team: serving, priorityClass: inference, every: 45m, from: 4d, until: 5d,
     gpus: [8], size: [1, 2, 4], duration: [2h, 10h], checkpointOnPreempt: true}}
  # vision: long training runs all week, checkpointing rarely
  - {{team: vision, priorityClass: training, every: 50m, until: {week},
     gpus: [8], size: [1, 2, 4], duration: [2h, 24h], checkpointInterval: 2h}}
  # nlp: fine-tuning bursts in the second half
  - {{team: nlp, priorityClass: fine-tuning, every: 12m, from: {half}, until: {week},
     gpus: [4, 8], size: [1, 2], duration: [30m, 8h], checkpointInterval: 20m}}
"""


STARVING_POLICY = """
priorityClasses: [{name: training, weight: 70}]
teams: [{name: lab, namespace: lab, quota: {gpus: 64}}]
"""


def starving_text(days: float, seed: int) -> str:
    """The issue's case: 64 GPUs kept busy by a stream of 1-GPU tasks, and every 4 hours a
    gang of two whole nodes of the same team and class."""
    return f"""
seed: {seed}
cluster: {{nodes: 8, gpusPerNode: 8}}
streams:
  - {{team: lab, priorityClass: training, every: 60s, until: {days}d, gpus: [1],
     duration: [30m, 2h]}}
  - {{team: lab, priorityClass: training, every: 4h, until: {days}d, gpus: [8], size: [2],
     duration: [2h, 4h]}}
"""


def variants(base: Policy) -> dict[str, Policy]:
    static_teams = tuple(
        team.model_copy(update={"lending": Lending.DONT_LEND}) for team in base.teams
    )
    kueue = base.preemption.model_copy(update={"victim_order": VictimOrder.PRIORITY_THEN_RECENT})
    best_effort = base.reservation.model_copy(update={"after_wait_seconds": None})
    return {
        "governed": base,
        "best-effort": base.model_copy(update={"reservation": best_effort}),
        "kueue-order": base.model_copy(update={"preemption": kueue}),
        "fcfs-idle": base.model_copy(
            update={"idle_compute": IdleComputeAllocation.FIRST_COME_FIRST_SERVE}
        ),
        "static": base.model_copy(update={"teams": static_teams}),
    }


class HeadWatch:
    """How long each gang that fits its team's quota spends as the next task of its team's
    queue (first in the team's admission order, out of backoff, all pods known)."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._priorities = Priorities(policy)
        self._quota = {team.namespace: team.quota.gpus for team in policy.teams}
        self._heads: set[str] = set()
        self._since = 0.0
        self.at_head_s: dict[str, float] = {}

    def round(self, state: GovernanceState, now: float) -> None:
        for key in self._heads:
            task = state.tasks.get(key)
            if task is not None and task.state.waiting:
                self.at_head_s[key] = self.at_head_s.get(key, 0.0) + now - self._since
        queue = [
            task
            for task in state.tasks.values()
            if task.state.waiting
            and task.complete
            and task.namespace in self._quota
            and (task.backoff_until is None or task.backoff_until <= now)
        ]
        sort_queue(queue, self._policy.admission, self._priorities)
        heads: dict[str, Task] = {}
        for task in queue:
            heads.setdefault(task.namespace, task)
        self._heads = {
            task.key
            for task in heads.values()
            if task.size > 1 and task.gpus <= self._quota[task.namespace]
        }
        self._since = now

    def worst_s(self) -> float:
        return max(self.at_head_s.values(), default=0.0)


@dataclass
class Run:
    report: SimReport
    worst_head_wait_s: float


def simulate(policy: Policy, workload: Workload, horizon_s: float) -> Run:
    watch = HeadWatch(policy)
    sim = SimCluster(policy, workload, on_round=watch.round)
    sim.run_until(horizon_s)
    watch.round(sim.state, sim.now)  # the heads still waiting at the end
    return Run(sim.report(), watch.worst_s())


@dataclass
class Figures:
    """One variant's figures, averaged over the seeds."""

    runs: list[SimReport] = field(default_factory=list)
    head_waits: list[float] = field(default_factory=list)

    def mean(self, value: Callable[[SimReport], float]) -> float:
        return statistics.fmean(value(report) for report in self.runs)

    def class_mean(self, name: str, value: Callable[[ClassStats], float]) -> float:
        stats = [c for r in self.runs for c in r.classes if c.priority_class == name]
        return statistics.fmean(value(c) for c in stats) if stats else 0.0


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f}"


def print_table(figures: dict[str, Figures]) -> None:
    columns = list(figures.values())

    def row(label: str, value: Callable[[Figures], str]) -> tuple[str, list[str]]:
        return label, [value(f) for f in columns]

    rows = [
        row("GPU utilization %", lambda f: f"{100 * f.mean(lambda r: r.utilization):.1f}"),
        row("goodput %", lambda f: f"{100 * f.mean(lambda r: r.goodput):.1f}"),
        row("tasks finished", lambda f: f"{f.mean(lambda r: r.finished):.0f}"),
        row("tasks failed", lambda f: f"{f.mean(lambda r: r.failed):.1f}"),
        row("preemptions", lambda f: f"{f.mean(lambda r: r.preemptions):.0f}"),
        row("fault requeues", lambda f: f"{f.mean(lambda r: r.fault_requeues):.0f}"),
        row("GPU-h lost to faults", lambda f: hours(f.mean(lambda r: r.lost_fault_gpu_s))),
        row("GPU-h lost to preemption", lambda f: hours(f.mean(lambda r: r.lost_preempt_gpu_s))),
        row("gangs: worst wait h", lambda f: hours(f.mean(lambda r: r.worst_gang_wait_s))),
        row("gangs: worst wait as next of team h", lambda f: hours(statistics.fmean(f.head_waits))),
    ]
    classes = sorted({c.priority_class for f in columns for r in f.runs for c in r.classes})
    for name in classes:
        rows.append(row(f"{name}: mean wait h", _class_cell(name, _mean_wait)))
        rows.append(row(f"{name}: p95 wait h", _class_cell(name, _p95)))
    teams = sorted({t for f in columns for r in f.runs for t in r.team_running_gpu_s})
    for team in teams:
        rows.append(row(f"{team}: GPU-h run", _team_cell(team)))
    width = max(len(label) for label, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{name:>12}" for name in figures))
    for label, cells in rows:
        print(f"{label:{width}}  " + "  ".join(f"{cell:>12}" for cell in cells))


def _class_cell(name: str, value: Callable[[ClassStats], float]) -> Callable[[Figures], str]:
    return lambda figures: hours(figures.class_mean(name, value))


def _team_cell(team: str) -> Callable[[Figures], str]:
    return lambda figures: hours(figures.mean(lambda r: r.team_running_gpu_s.get(team, 0.0)))


def _mean_wait(stats: ClassStats) -> float:
    return stats.mean_wait_s


def _p95(stats: ClassStats) -> float:
    return stats.p95_wait_s


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant (seeds 1..N)")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument(
        "--starving-days", type=float, default=2.0, help="days of the starving-gangs case"
    )
    args = parser.parse_args()
    base = parse_policy(POLICY, "bench policy")
    loads = [
        parse_workload(workload_text(args.days, seed), "bench workload")
        for seed in range(1, args.seeds + 1)
    ]
    print(
        f"{args.days:g} simulated days of 64 nodes x 8 GPUs, ~{len(loads[0].expand())} tasks "
        f"a run, {args.seeds} seed(s) per variant, figures averaged over seeds"
    )
    started = time.perf_counter()
    figures: dict[str, Figures] = {}
    for name, policy in variants(base).items():
        print(f"  {name:<12}", end="", flush=True)
        figures[name] = Figures()
        for load in loads:
            begun = time.perf_counter()
            run = simulate(policy, load, args.days * 86400)
            figures[name].runs.append(run.report)
            figures[name].head_waits.append(run.worst_head_wait_s)
            print(f" {time.perf_counter() - begun:.1f}s", end="", flush=True)
        print()
    print(f"all runs: {time.perf_counter() - started:.1f} s\n")
    print_table(figures)
    aware = figures["governed"].mean(lambda r: r.lost_preempt_gpu_s) / 3600
    kueue = figures["kueue-order"].mean(lambda r: r.lost_preempt_gpu_s) / 3600
    if kueue > 0:
        print(
            f"\ncheckpoint-aware victims lost {aware:.1f} GPU-h to preemption, Kueue's order "
            f"{kueue:.1f} GPU-h ({100 * (kueue - aware) / kueue:+.0f}% saved)"
        )
    governed = figures["governed"].mean(lambda r: r.utilization)
    static = figures["static"].mean(lambda r: r.utilization)
    best = figures["best-effort"].mean(lambda r: r.utilization)
    print(
        f"lending and borrowing: {100 * governed:.1f}% GPU utilization against "
        f"{100 * static:.1f}% with static quotas"
    )
    limit = (base.reservation.after_wait_seconds or 0.0) / 3600
    head = {name: max(figures[name].head_waits) / 3600 for name in ("governed", "best-effort")}
    worst = {
        name: figures[name].mean(lambda r: r.worst_gang_wait_s) / 3600
        for name in ("governed", "best-effort")
    }
    print(
        f"bounded wait (capacity held after {limit:g} h): a gang waited at most "
        f"{head['governed']:.1f} h as the next task of its team ({head['best-effort']:.1f} h "
        f"best effort), {worst['governed']:.1f} h in all ({worst['best-effort']:.1f} h); "
        f"utilization {100 * governed:.1f}% against {100 * best:.1f}% best effort"
    )
    starving(args.starving_days, args.seeds)


def starving(days: float, seeds: int) -> None:
    """The second table: whole-node gangs behind a stream of 1-GPU tasks (one figure per
    seed)."""
    base = parse_policy(STARVING_POLICY, "starving policy")
    best = base.reservation.model_copy(update={"after_wait_seconds": None})
    policies = {"governed": base, "best-effort": base.model_copy(update={"reservation": best})}
    loads = [parse_workload(starving_text(days, seed), "starving") for seed in range(1, seeds + 1)]
    print(
        f"\nstarving gangs: {days:g} simulated days of 8 nodes x 8 GPUs, a 1-GPU task a minute "
        f"and a 2-node gang every 4 h, one team, {seeds} seed(s)"
    )
    runs = {
        name: [simulate(p, load, days * 86400) for load in loads] for name, p in policies.items()
    }
    print(f"{'':38}  " + "  ".join(f"{name:>20}" for name in runs))
    for label, value in (
        ("GPU utilization %", lambda r: f"{100 * r.report.utilization:.1f}"),
        ("gangs: worst wait h", lambda r: hours(r.report.worst_gang_wait_s)),
        ("gangs: worst wait as next of team h", lambda r: hours(r.worst_head_wait_s)),
    ):
        cells = [" / ".join(value(r) for r in group) for group in runs.values()]
        print(f"{label:38}  " + "  ".join(f"{cell:>20}" for cell in cells))


if __name__ == "__main__":
    main()
