"""One full governance decision over 10,000 tasks on 2,000 nodes (16,000 GPUs).

The cluster is full: teams 1-3 run on GPUs borrowed from team 0, whose waiting tasks now
reclaim them, and teams at their quota have higher-priority work waiting, so one round
admits, reclaims and preempts for priority. Prints p50/p99 of
``decide()`` over repeated runs (target: under 50 ms), with capacity per node (placement
checked) and as a plain count. Usage: ``python bench/governance_decision.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.governance import (
    Capacity,
    FreeGpus,
    GovernanceState,
    Policy,
    Task,
    TaskState,
    decide,
)
from coordinator.governance.policy import policy_from_mapping

NODES = 2000
GPUS_PER_NODE = 8
TASKS = 10_000
TEAMS = 8
CLASSES = {"inference": 100, "experiment": 80, "training": 70, "fine-tuning": 60, "batch": 40}
NOW = 1_000_000.0


def build_policy() -> Policy:
    quota = NODES * GPUS_PER_NODE // TEAMS
    return policy_from_mapping(
        {
            "admission": "task-ranking",
            "idleCompute": "fair-share",
            "priorityClasses": [{"name": n, "weight": w} for n, w in CLASSES.items()],
            "teams": [
                {
                    "name": f"team-{i}",
                    "namespace": f"team-{i}",
                    "quota": {"gpus": quota},
                    "lending": "lend-and-borrow" if i % 4 else "lend",
                    "borrowLimitPercent": 100,
                    "fairShareWeight": 10 + 10 * i,
                    "preemptLowerPriority": i % 2 == 0,
                }
                for i in range(TEAMS)
            ],
        }
    )


# GPUs each team holds before the round: team 0 lends most of its quota to teams 1-3,
# teams 4-7 sit at their quota.
HELD = {0: 500, 1: 2500, 2: 2500, 3: 2500, 4: 2000, 5: 2000, 6: 2000, 7: 2000}


def build_state(seed: int) -> GovernanceState:
    """A full cluster: teams 1-3 borrow from team 0, whose waiting tasks now reclaim; teams
    4-7 are at quota with higher-priority work waiting (4 and 6 preempt lower priority)."""
    rng = random.Random(seed)
    nodes = {f"node-{i:04d}": GPUS_PER_NODE for i in range(NODES)}
    state = GovernanceState(Capacity.of_nodes(nodes))
    free = FreeGpus(nodes)
    held = dict.fromkeys(HELD, 0)
    for index in range(TASKS):
        team = index % TEAMS
        size = rng.choice([1, 1, 1, 2])
        per_pod = rng.choice([1, 1, 2, 2, 4, 8])
        task = Task(
            f"team-{team}",
            f"task-{index:05d}",
            (per_pod,) * size,
            queued_at=rng.uniform(0, NOW),
            priority_class=rng.choice(list(CLASSES)),
            size=size,
        )
        task.times_preempted = rng.choice([0, 0, 0, 1, 2])
        if held[team] + task.gpus <= HELD[team]:
            placement = free.place(task.pod_gpus)
            if placement is not None:
                held[team] += task.gpus
                task.state = TaskState.RUNNING
                task.placement = placement
                task.admitted_at = rng.uniform(task.queued_at, NOW)
                task.started_at = task.admitted_at
                if rng.random() < 0.7:
                    task.last_checkpoint = rng.uniform(task.started_at, NOW)
        state.add(task)
    return state


def measure(state: GovernanceState, policy: Policy, runs: int) -> list[float]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        decide(state, policy, NOW)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    policy = build_policy()
    state = build_state(args.seed)
    holding = sum(1 for t in state.tasks.values() if t.state.holding)
    used = sum(t.gpus for t in state.tasks.values() if t.state.holding)
    print(
        f"{len(state.tasks)} tasks ({holding} holding {used} GPUs, "
        f"{len(state.tasks) - holding} waiting) on {NODES} nodes x {GPUS_PER_NODE} GPUs"
    )
    sample = decide(state, policy, NOW)
    borrowed = sum(1 for a in sample.admit if a.borrowed)
    print(
        f"one round: {len(sample.admit)} admitted ({borrowed} borrowing), "
        f"{len(sample.preempt)} preempted, {len(sample.waiting)} waiting with a reason"
    )
    for label, chosen in (
        ("capacity per node", state),
        (
            "capacity as a count",
            GovernanceState(Capacity.of_count(NODES * GPUS_PER_NODE), state.tasks),
        ),
    ):
        print(f"{label}: {args.runs} runs ...", flush=True)
        timings = measure(chosen, policy, args.runs)
        print(
            f"  decide(): p50 {percentile(timings, 0.50):.1f} ms, "
            f"p99 {percentile(timings, 0.99):.1f} ms, "
            f"mean {statistics.fmean(timings):.1f} ms (target < 50 ms)"
        )


if __name__ == "__main__":
    main()
