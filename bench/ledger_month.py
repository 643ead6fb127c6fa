"""The usage ledger over a simulated month of a 2,000-node cluster: rows, size on disk, CPU.

    python -m bench.ledger_month [--nodes 2000] [--teams 50] [--tasks 100000] [--days 30]
        [--sample-s 1200] [--flush-s S] [--window-s 600] [--store sqlite|URL] [--seed 13]
        [--compare-sample-s S]

The ledger is the real one: ``Ledger`` with ``LedgerBooks`` on a real store (a temporary
SQLite file by default, opened durable as the coordinator opens it), fed an ``Observation``
every ``--sample-s`` and flushed (take, then write) after each, as the recorder does;
nothing is pruned (the default retention is 400 days). Only the system boundary is made
up: the workload (governance's tasks) and the agents' readings. Observing every 1200 s
keeps the month near 6 minutes on a 2-core VM (600 s: about 11); the rows do not depend on
it, and ``--window-s`` of the month, mid-way, is observed at the recorder's own cadence (a
sample every 5 s, a flush every 15 s): the CPU per call at the recorder's defaults is
measured there, at the cluster's full size.

The month: ``--nodes`` nodes x 8 GPUs of 3 instance types, ``--teams`` teams with
guarantees (some borrow, the others lend), ``--tasks`` tasks arriving uniformly, of 1, 2,
4 or 8 GPUs on one node or gangs of 2-4 whole nodes, running 10 minutes to 2 days, placed
first-fit (a task waits while nothing fits). Some are preempted and requeued, some
requeued by a node fault (the node out for 1-8 h), some fail; tasks checkpoint. Every node
is silent once or twice for 5-30 minutes (its reading's time stops advancing). Each task
runs at a steady utilization of its own, a quarter of them under 5 % (idle).

Observations are built from the simulation directly (not through governance's
``observe()``): a task's ``TaskFacts`` and ``Holding`` are new objects only when they
change. The readings are built afresh on every call, as the coordinator's are from its
model. Prints the rows per ledger table, the store's size (before and after ``VACUUM``),
bytes per task, the projection to 400 days, and the ledger's CPU (process time) per
``observe()`` and per flush, with what they come to at the recorder's defaults. A silence
shorter than the sample interval plus ``stale_s`` can fall between two observations: fewer
silences are recorded at 1200 s than at the recorder's 5 s (both counts are printed).

``--compare-sample-s S`` runs the same month a second time, observing every S seconds, and
prints both runs' rows side by side: the rows are per hour, task, task-day and silence, not
per sample, so only what falls between two observations differs (a short silence, a team's
few minutes in an hour, a task admitted in the run's last minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ledger_month_sim import DAY, GPUS, START, Month
from coordinator.ledger.accrue import AccrualConfig, NodeReading
from coordinator.ledger.books import LedgerBooks
from coordinator.ledger.idle import IdleWatch
from coordinator.ledger.ledger import Ledger
from coordinator.ledger.recorder import LedgerSettings
from coordinator.store import Store, StoreUrl, Transaction, open_store

TABLES = ("ledger_hourly", "ledger_cluster_hourly", "ledger_tasks", "ledger_task_daily",
          "ledger_coverage", "ledger_missing")  # fmt: skip
RETENTION_DAYS = LedgerSettings().retention_s / DAY


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile (as bench/_common.py's, which needs paho to import)."""
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


# --- the ledger over the month -----------------------------------------------------------------


@dataclass
class Timings:
    """CPU (process time) of the ledger's calls, in seconds, one entry a call."""

    observe: list[float] = field(default_factory=list)
    take: list[float] = field(default_factory=list)
    write: list[float] = field(default_factory=list)
    write_wall: list[float] = field(default_factory=list)
    readings: int = 0
    """Calls of the readings callback made by the timed observe() calls."""

    def flushes(self) -> list[float]:
        return [t + w for t, w in zip(self.take, self.write, strict=False)]


@dataclass
class Figures:
    rows: dict[str, int]
    month: Timings
    cadence: Timings
    """The window observed at the recorder's own cadence (a sample every 5 s, a flush
    every 15 s), mid-month, at the cluster's full size."""
    reading_cpu_s: float
    """CPU of one readings call (the fake fleet's), timed apart."""
    holdings: list[int]
    counts: dict[str, int]
    silences: int
    """Silences simulated (recorded: ledger_missing rows, less any coordinator gap)."""
    allocated_pct: float
    waiting_max: int
    size_mib: float | None
    vacuumed_mib: float | None
    elapsed_s: float


def instants(days: int, sample_s: float, window_s: float) -> Iterator[tuple[float, bool]]:
    """(instant, in the cadence window) for every observation: every ``sample_s``, and for
    ``window_s`` from the middle of the month, every recorder sample (5 s)."""
    steps = round(days * DAY / sample_s)
    mid = START + (steps // 2) * sample_s
    cadence = LedgerSettings().sample_s
    window = [mid + k * cadence for k in range(round(window_s / cadence))]
    grid = (START + step * sample_s for step in range(steps + 1))
    last = None
    for at in heapq.merge(grid, window):
        if at != last:
            yield at, mid <= at < mid + window_s
        last = at


def run_month(url: str, nodes: int, teams: int, tasks: int, days: int, sample_s: float,
              flush_s: float, seed: int, window_s: float,
              progress: Callable[[str], None]) -> Figures:  # fmt: skip
    """The month, observed every ``sample_s`` and flushed every ``flush_s`` into ``url``;
    for ``window_s`` mid-month, observed and flushed at the recorder's cadence."""
    began = time.perf_counter()
    month = Month(nodes, teams, tasks, days, seed)
    settings = LedgerSettings()
    store = open_store(url)  # durable, as the coordinator opens it
    calls = 0

    def readings(node: str) -> NodeReading | None:
        nonlocal calls
        calls += 1
        return month.reading(node)

    config = AccrualConfig(settings.idle_threshold_pct, settings.stale_s)
    ledger = Ledger(LedgerBooks(store, "bench"), readings, lambda: month.types, config,
                    IdleWatch(settings.idle_threshold_pct, settings.idle_after_s))  # fmt: skip
    timings = {False: Timings(), True: Timings()}
    reading_cpu: list[float] = []
    holdings: list[int] = []
    waiting_max = 0
    every = list(instants(days, sample_s, window_s))
    report_every = max(1, len(every) // 10)
    last_flush = -math.inf
    for n, (at, window) in enumerate(every):
        timing = timings[window]
        month.advance(at)
        obs = month.observation()
        holdings.append(len(obs.holdings))
        waiting_max = max(waiting_max, len(month.waiting))
        calls_before = calls
        cpu = time.process_time()
        ledger.observe(obs)
        timing.observe.append(time.process_time() - cpu)
        timing.readings += calls - calls_before
        if n % 10 == 0:  # the fake fleet's own share of that: one reading per node, timed apart
            cpu = time.process_time()
            for node in month.names:
                month.reading(node)
            reading_cpu.append((time.process_time() - cpu) / len(month.names))
        if at - last_flush >= (settings.flush_s if window else flush_s) or n == len(every) - 1:
            last_flush = at
            cpu = time.process_time()
            pending = ledger.take(at)
            timing.take.append(time.process_time() - cpu)
            if pending is not None:
                cpu, wall = time.process_time(), time.perf_counter()
                ledger.write(pending)
                timing.write.append(time.process_time() - cpu)
                timing.write_wall.append(time.perf_counter() - wall)
        if n % report_every == 0 and n:
            progress(f"  day {(at - START) / DAY:4.1f}/{days}: {n:,}/{len(every):,} observations, "
                     f"{len(obs.holdings):,} tasks holding, {len(month.waiting):,} waiting, "
                     f"{month.count['finished']:,} finished; observe p50 "
                     f"{statistics.median(timings[False].observe[-report_every:]) * 1e3:.0f} ms "
                     f"CPU; {time.perf_counter() - began:.0f}s")  # fmt: skip
    store.close()
    for run in month.active.values():
        if run.holds and run.admitted_at is not None:
            month.held_gpu_s += run.gpus * (month.end - run.admitted_at)
    rows, size, vacuumed = measure_store(url)
    return Figures(
        rows=rows, month=timings[False], cadence=timings[True],
        reading_cpu_s=statistics.median(reading_cpu), holdings=holdings, counts=month.count,
        silences=sum(len(w) for w in month.silent),
        allocated_pct=100 * month.held_gpu_s / (nodes * GPUS * days * DAY),
        waiting_max=waiting_max, size_mib=size, vacuumed_mib=vacuumed,
        elapsed_s=time.perf_counter() - began,
    )  # fmt: skip


def measure_store(url: str) -> tuple[dict[str, int], float | None, float | None]:
    """Rows per ledger table; for SQLite the file's MiB (the store closed, so its WAL is
    checkpointed into it), then after ``VACUUM``; for PostgreSQL the tables' total size."""
    parsed = StoreUrl.parse(url)
    if parsed.dialect != "sqlite":
        with open_store(url) as store:
            counted = _count(store)
            total = sum(store.run(lambda tx, t=t: tx.fetchall(  # type: ignore[misc]
                "SELECT pg_total_relation_size(CAST(? AS regclass))", (t,)))[0][0]
                for t in TABLES)  # fmt: skip
        return counted, total / 2**20, None
    with open_store(url) as store:
        counted = _count(store)
    path = Path(parsed.target)
    before = path.stat().st_size / 2**20
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return counted, before, path.stat().st_size / 2**20


def _count(store: Store) -> dict[str, int]:
    def work(tx: Transaction) -> dict[str, int]:
        return {t: int(tx.fetchall(f"SELECT count(*) FROM {t}")[0][0]) for t in TABLES}

    return store.run(work)


# --- the command -------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    if not values:
        return "none"
    return (f"p50 {statistics.median(values) * 1e3:.2f} ms, p99 {percentile(values, 99) * 1e3:.2f} "
            f"ms, max {max(values) * 1e3:.1f} ms")  # fmt: skip


@contextlib.contextmanager
def scratch(store: str, name: str) -> Iterator[str]:
    """The store to fill: a fresh SQLite file in a temporary directory, or ``store``."""
    if store != "sqlite":
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="gpuwarden-ledger-month-") as tmp:
        yield f"sqlite:///{Path(tmp) / name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--sample-s", type=float, default=1200.0,
                        help="observe every S seconds (the recorder: 5); rows do not "
                             "depend on it")  # fmt: skip
    parser.add_argument("--flush-s", type=float, default=None,
                        help="flush every S seconds (default: each observation)")  # fmt: skip
    parser.add_argument("--window-s", type=float, default=600.0,
                        help="observe this long mid-month at the recorder's cadence (5 s "
                             "samples, 15 s flushes), where the CPU per call is measured; "
                             "0: none")  # fmt: skip
    parser.add_argument("--store", default="sqlite",
                        help="'sqlite' (a temporary file) or an empty store's URL")  # fmt: skip
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--compare-sample-s", type=float, default=None,
                        help="run the same month again observing every S seconds; "
                             "compare rows")  # fmt: skip
    args = parser.parse_args()
    if args.compare_sample_s is not None and args.store != "sqlite":
        parser.error("--compare-sample-s needs --store sqlite (two fresh stores)")
    runs = [args.sample_s] + ([args.compare_sample_s] if args.compare_sample_s else [])
    results = []
    for sample_s in runs:
        flush_s = args.flush_s or sample_s
        print(f"{args.days} days of {args.nodes:,} nodes x {GPUS} GPUs, {args.teams} teams, "
              f"{args.tasks:,} tasks; observing every {sample_s:g}s, flushing every {flush_s:g}s"
              + (f", and for {args.window_s:g}s mid-month at the recorder's cadence"
                 if args.window_s else "")
              + f" (seed {args.seed})", flush=True)  # fmt: skip
        with scratch(args.store, f"ledger-{sample_s:g}.db") as url:
            figures = run_month(url, args.nodes, args.teams, args.tasks, args.days, sample_s,
                                flush_s, args.seed, args.window_s,
                                lambda line: print(line, flush=True))  # fmt: skip
        results.append(figures)
        report(figures, args.days, args.tasks, sample_s, flush_s)
    if len(results) == 2:
        a, b = results
        print(f"\nrows by table, observing every {runs[0]:g}s vs every {runs[1]:g}s:")
        for table in TABLES:
            print(f"  {table:<22} {a.rows[table]:>10,} {b.rows[table]:>10,}  "
                  f"({b.rows[table] - a.rows[table]:+,})")  # fmt: skip


def report(f: Figures, days: int, tasks: int, sample_s: float, flush_s: float) -> None:
    c = f.counts
    print(f"simulated in {f.elapsed_s:.0f}s: {c['arrived']:,} tasks arrived, {c['admitted']:,} "
          f"admissions, {c['finished']:,} finished, {c['failed']:,} failed, "
          f"{c['preempted']:,} preempted, {c['fault_requeued']:,} requeued by {c['faults']:,} "
          f"node faults, {f.silences:,} silences; {f.allocated_pct:.0f} % of GPU-time "
          f"allocated; holding per observation p50 {statistics.median(f.holdings):,.0f}, max "
          f"{max(f.holdings):,}; at most {f.waiting_max:,} waiting")  # fmt: skip
    print(f"rows ({sum(f.rows.values()):,}):")
    for table in TABLES:
        print(f"  {table:<22} {f.rows[table]:>10,}")
    if f.size_mib is not None:
        per_task = f.size_mib * 2**20 / tasks
        line = (f"store: {f.size_mib:.1f} MiB on disk for {days} days, {per_task:,.0f} bytes "
                f"per task; at the {RETENTION_DAYS:.0f}-day retention: "
                f"{f.size_mib * RETENTION_DAYS / days:,.0f} MiB")  # fmt: skip
        if f.vacuumed_mib is not None:
            year = f.vacuumed_mib * RETENTION_DAYS / days
            line += f"; after VACUUM {f.vacuumed_mib:.1f} MiB, {year:,.0f} MiB at the retention"
        print(line)
    m = f.month
    print(f"CPU per observe() ({len(m.observe):,}, every {sample_s:g}s): {ms(m.observe)}")
    print(f"CPU per flush ({len(m.take):,}, every {flush_s:g}s): take {ms(m.take)}; write "
          f"{ms(m.write)} (wall {ms(m.write_wall)})")  # fmt: skip
    w, defaults = f.cadence, LedgerSettings()
    if not w.observe:
        return
    observe_p50, flush_p50 = statistics.median(w.observe), statistics.median(w.flushes())
    per_observe = w.readings / len(w.observe)
    print(f"at the recorder's cadence, mid-month ({len(w.observe)} samples, every "
          f"{defaults.sample_s:g}s; {len(w.take)} flushes, every "
          f"{defaults.flush_s:g}s):")  # fmt: skip
    print(f"  observe() {ms(w.observe)}; of which the readings callback ({per_observe:,.0f} "
          f"calls, the fake fleet's, {f.reading_cpu_s * 1e6:.1f} us each) about "
          f"{per_observe * f.reading_cpu_s * 1e3:.1f} ms")  # fmt: skip
    print(f"  flush: take {ms(w.take)}; write {ms(w.write)} (wall {ms(w.write_wall)})")
    observing, flushing = observe_p50 / defaults.sample_s, flush_p50 / defaults.flush_s
    print(f"  {100 * observing:.2f} % of a core observing (on the event loop) + "
          f"{100 * flushing:.2f} % flushing (the take on the loop, the write in a thread) = "
          f"{100 * (observing + flushing):.2f} % of one core (medians)")  # fmt: skip


if __name__ == "__main__":
    main()
