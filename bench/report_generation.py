"""Usage report generation over a month of a large ledger, and what a month takes on disk.

    python -m bench.report_generation [--teams 50] [--tasks 100000] [--days 30] [--types 3]

Fills an SQLite store the way the recorder's flushes do (hourly rows per team and instance
type, the cluster's hourly rows, a row per task and a row per task per day it ran), then
times the summary and task reports over the whole range, each read from the store, built and
written as CSV. Target: each under 2 s. Prints the store's size: the ledger of a month.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.ledger.books import read_rows
from coordinator.ledger.report import summary_report, tasks_report, to_csv
from coordinator.store import open_store

DAY = 86400
TARGET_S = 2.0
START = 1_772_409_600


def fill(url: str, teams: int, tasks: int, days: int, types: int) -> None:
    rng = random.Random(13)
    team_names = [f"team-{i:02d}" for i in range(teams)]
    type_names = [f"type-{i}" for i in range(types)]
    with open_store(url, durable=False) as store:
        def work(tx):  # type: ignore[no-untyped-def]
            tx.executemany(
                "INSERT INTO ledger_hourly VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(START + h * 3600, t, k, 28800.0, 3600.0, 0.0, 20000.0, 28800.0, 1800.0)
                 for h in range(days * 24) for t in team_names for k in type_names])
            tx.executemany("INSERT INTO ledger_cluster_hourly VALUES (?, ?, ?, ?)",
                           [(START + h * 3600, k, 5.7e6, 4.3e6)
                            for h in range(days * 24) for k in type_names])
            task_rows, daily = [], []
            for n in range(tasks):
                begin = START + rng.random() * (days - 1) * DAY
                end = begin + rng.uniform(600, 2 * DAY)
                key = (f"team-{n % teams:02d}/task-{n}", begin)
                task_rows.append((*key, f"team-{n % teams:02d}", "training", 8, begin,
                                  end, "finished", 0, 0, end))
                day = int(begin // DAY) * DAY
                while day < end:
                    daily.append((*key, day, 8 * 3600.0, 0.0, 5000.0, 28800.0, 0.0, 0.0, 0.0))
                    day += DAY
            tx.executemany("INSERT INTO ledger_tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           task_rows)
            tx.executemany("INSERT INTO ledger_task_daily VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", daily)
            tx.execute("INSERT INTO ledger_coverage (writer, started, ended) VALUES (?, ?, ?)",
                       ("bench", START, START + days * DAY))

        store.run(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--types", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpuwarden.db"
        url = f"sqlite:///{path}"
        started = time.perf_counter()
        fill(url, args.teams, args.tasks, args.days, args.types)
        print(f"filled {args.days} days x {args.teams} teams x {args.types} instance types, "
              f"{args.tasks:,} tasks in {time.perf_counter() - started:.1f}s; store "
              f"{path.stat().st_size / 2**20:.1f} MiB", flush=True)
        end = START + args.days * DAY
        ok = True
        for kind in ("summary", "tasks"):
            times = []
            for _ in range(3):
                started = time.perf_counter()
                with open_store(url) as store:
                    rows = read_rows(store, START, end, None, kind == "tasks")
                build = tasks_report if kind == "tasks" else summary_report
                report = build(rows, START, end, end + 60)
                text = to_csv(report)
                times.append(time.perf_counter() - started)
            best = min(times)
            ok &= best < TARGET_S
            print(f"{kind} report: {len(report.rows):,} rows, {len(text) / 2**20:.1f} MiB of "
                  f"CSV, best of 3 {best:.2f}s (all: {', '.join(f'{t:.2f}' for t in times)}; "
                  f"target < {TARGET_S:.0f}s)", flush=True)
    print(f"result: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
