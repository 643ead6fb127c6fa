"""One full governance decision over 10,000 tasks: the benchmark's cluster, adversarial
layouts, and the benchmark's cluster at 10 times the size.

The benign cluster (2,000 nodes, 16,000 GPUs) is full: teams 1-3 run on GPUs borrowed from
team 0, whose waiting tasks now reclaim them, and teams at their quota have higher-priority
work waiting, so one round admits, reclaims and preempts for priority. The adversarial
layouts (bench/governance_layouts.py) make the victim search work hard: room scattered over
every node, whole-node reclaims nothing can serve, gangs of one and several pod sizes,
victims on several nodes, 100 priority classes. Targets: p99 under 50 ms, every layout
within 3x of the benign one, and the benign one at 10x (100,000 tasks on 20,000 nodes) at
most 12x the time of 1x.

Every layout runs under the default ``preemption.maxVictimsPerRound`` (1,000; the 10x
cluster's is 10,000, so it decides the same as 1x, ten times over). A layout whose round
stops at that budget is measured again without one: the search's own cost per victim stays
in view.

Figures are taken in cycles, every layout measured once per cycle, so a machine that gets
busier or quieter meanwhile shifts them all alike: ratios taken in one run are portable,
absolute figures are this machine's. Each block runs untimed rounds first and then
``gc.collect()``; collections the rounds cause would stay in the figures (part of what a
decision costs) and are counted: none since ``decide()`` pauses the collector.
Usage: ``python bench/governance_decision.py [--runs N] [--cycles N] [--seed N] [--no-scale]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.governance_layouts import ADVERSARIAL, NOW, Layout, benign, without_victim_budget
from coordinator.governance import Capacity, GovernanceState, decide


@dataclass
class Series:
    """One layout's timed rounds over every cycle."""

    what: str = ""
    tasks: int = 0
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    outcome: str = ""


def measure(layout: Layout, runs: int, warmup: int, series: Series) -> None:
    """``runs`` timed rounds after ``warmup`` untimed ones and a full collection."""
    for _ in range(warmup):
        decisions = decide(layout.state, layout.policy, NOW)
    gc.collect()
    series.what, series.tasks = layout.what, len(layout.state.tasks)
    if warmup:
        stopped = ", stopped at the victim budget" if decisions.stopped_at else ""
        chosen = f"{len(decisions.admit)} admitted, {len(decisions.preempt)} preempted"
        series.outcome = chosen + stopped

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            series.collections[info["generation"]] += 1

    gc.callbacks.append(count)
    try:
        for _ in range(runs):
            wall, cpu = time.perf_counter(), time.process_time()
            decide(layout.state, layout.policy, NOW)
            series.cpu_ms.append((time.process_time() - cpu) * 1000)
            series.wall_ms.append((time.perf_counter() - wall) * 1000)
    finally:
        gc.callbacks.remove(count)


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (so p99 of 50 runs is not simply the
    slowest one)."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def as_count(layout: Layout) -> Layout:
    healthy = layout.nodes * 8
    state = GovernanceState(Capacity.of_count(healthy), layout.state.tasks)
    return Layout(
        "benign, as a count",
        "the benign cluster, capacity as a plain count",
        layout.policy,
        state,
        layout.nodes,
    )


NO_BUDGET = ", no budget"


def variants(layout: Layout, is_benign: bool) -> list[Layout]:
    """The benign layout also as a count; a layout whose round stops at the default victim
    budget also without one."""
    if is_benign:
        return [layout, as_count(layout)]
    if decide(layout.state, layout.policy, NOW).stopped_at is None:
        return [layout]
    unbounded = without_victim_budget(layout)
    assert unbounded.name.endswith(NO_BUDGET)
    return [layout, unbounded]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed rounds per layout")
    parser.add_argument("--cycles", type=int, default=4, help="the runs are split in cycles")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-scale", action="store_true", help="skip the 10x cluster")
    args = parser.parse_args()
    builders = [benign, *ADVERSARIAL]
    series: dict[str, Series] = {}
    per_cycle = max(1, args.runs // args.cycles)
    print(f"{len(builders) + 1} layouts, {per_cycle} rounds each per cycle, {args.cycles} cycles")
    for cycle in range(args.cycles):
        print(f"  cycle {cycle + 1}:", end="", flush=True)
        for build in builders:
            layout = build(args.seed)
            for chosen in variants(layout, build is benign):
                measure(chosen, per_cycle, args.warmup, series.setdefault(chosen.name, Series()))
                print(f" {chosen.name}", end="", flush=True)
            del layout
            gc.collect()
        print()
    base = series["benign"]
    base50, base99 = percentile(base.wall_ms, 0.5), percentile(base.wall_ms, 0.99)
    heads = ("layout", "tasks", "p50 ms", "p99 ms", "p50 x", "p99 x")
    print("\n{:27} {:>7} {:>8} {:>8} {:>6} {:>6}  gc y/m/f  one round".format(*heads))
    for name, s in series.items():
        p50, p99 = percentile(s.wall_ms, 0.5), percentile(s.wall_ms, 0.99)
        print(
            f"{name:27} {s.tasks:>7} {p50:8.1f} {p99:8.1f} {p50 / base50:6.2f} {p99 / base99:6.2f}"
            f"  {'/'.join(map(str, s.collections)):8}  {s.outcome}"
        )
    def worst(names: list[str]) -> tuple[float, str]:
        return max(
            (percentile(series[n].wall_ms, 0.99) / percentile(base.wall_ms, 0.99), n)
            for n in names
        )

    shipped = [name for name in series if not name.endswith(NO_BUDGET)]
    ratio, slowest = worst(shipped)
    print(
        f"\nbenign: p50 {percentile(base.wall_ms, 0.5):.1f} ms, p99 "
        f"{percentile(base.wall_ms, 0.99):.1f} ms, cpu p50 {percentile(base.cpu_ms, 0.5):.1f} ms "
        f"(target p99 < 50 ms); the slowest layout at p99: {slowest}, {ratio:.2f}x the "
        f"benign one (target: 3x)"
    )
    unbounded = [name for name in series if name.endswith(NO_BUDGET)]
    if unbounded:
        ratio, slowest = worst(unbounded)
        print(
            f"with no victim budget, the slowest at p99: {slowest}, {ratio:.2f}x (what the "
            f"search costs when one round chooses every victim)"
        )
    if not args.no_scale:
        scaled(args, base)


def scaled(args: argparse.Namespace, base: Series) -> None:
    """The benign cluster at 10x, against 1x, interleaved (a few rounds: each is seconds)."""
    small, big = Series(), Series()
    one, ten = benign(args.seed), benign(args.seed, scale=10)
    print(f"\n10x: {len(ten.state.tasks):,} tasks on {ten.nodes:,} nodes, 1x and 10x alternately")
    for _ in range(3):
        measure(one, 10, 1, small)
        measure(ten, 2, 1, big)
    ratio = statistics.median(big.wall_ms) / statistics.median(small.wall_ms)
    cpu = statistics.median(big.cpu_ms) / statistics.median(small.cpu_ms)
    print(
        f"  1x: median {statistics.median(small.wall_ms):.1f} ms; 10x: median "
        f"{statistics.median(big.wall_ms):.0f} ms, min {min(big.wall_ms):.0f} ms; "
        f"{ratio:.1f}x the time for 10x the work (cpu {cpu:.1f}x; target: at most 12x)"
    )


if __name__ == "__main__":
    main()
