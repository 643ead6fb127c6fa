"""What the usage ledger's sample costs governance: ``observe()`` over the benchmark's
cluster, on the event loop, every ``LedgerSettings.sample_s`` (5 s).

    python bench/ledger_observe.py [--runs 30] [--seed 1]

Builds the benign layout of ``bench/governance_layouts.py`` (2,000 nodes, 10,000 tasks),
gives every task a pod UID as its owner (as the Kubernetes governor's accounting view
does), then times ``coordinator.ledger.observe.observe`` (the holdings, the borrowed and
lent GPUs per team, every task's facts) after one untimed call and a full collection.
Prints p50, p99 and the worst, in CPU time, and the share of one core at a 5 s sample.
Figures only, no target: the ledger's own cost per sample is ``bench.ledger_month``'s.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.governance_layouts import NOW, benign
from coordinator.ledger.observe import observe
from coordinator.ledger.recorder import LedgerSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    layout = benign(args.seed)
    state, policy = layout.state, layout.policy
    owners = {key: frozenset({f"pod:{key}"}) for key in state.tasks}
    first = observe(state, policy, NOW, owners)
    gc.collect()
    took: list[float] = []
    for _ in range(args.runs):
        started = time.process_time()
        observe(state, policy, NOW, owners)
        took.append(time.process_time() - started)
    took.sort()
    p99 = took[min(len(took) - 1, round(0.99 * (len(took) - 1)))]
    sample_s = LedgerSettings().sample_s
    print(f"observe() over {len(state.tasks):,} tasks ({len(first.holdings):,} holding, "
          f"{len(first.tasks):,} with facts), {args.runs} runs: p50 "
          f"{statistics.median(took) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, worst "
          f"{took[-1] * 1000:.1f} ms CPU; at a sample every {sample_s:g} s, "
          f"{100 * statistics.median(took) / sample_s:.2f} % of one core")  # fmt: skip


if __name__ == "__main__":
    main()
