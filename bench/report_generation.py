"""Usage report generation over a month of a large ledger, and what a month takes on disk.

    python -m bench.report_generation [--teams 50] [--tasks 100000] [--days 30] [--types 3]

Fills an SQLite store the way the recorder's flushes do (hourly rows per team and instance
type, the cluster's hourly rows, a row per task and a row per task per day it ran), then
times the summary and task reports over the whole range, each read from the store, built and
written as CSV. Target: each under 2 s. Prints the store's size: the ledger of a month.

Then serves the month's task report through the coordinator's HTTP API (the real app and
``UsageService``, over loopback), as CSV and as JSON, while a 1 ms timer runs on the same
event loop, and prints the longest the timer waited: how long the coordinator's ingest and
fault handling stop while someone exports a report (figures only, no target).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from coordinator.api import build_app
from coordinator.ledger.books import read_rows
from coordinator.ledger.report import Report, summary_report, tasks_report, to_csv, utc_date
from coordinator.ledger.service import UsageService
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


class _Backend:
    """The API's backend as the daemon is, for its usage route: a ``UsageService``."""

    def __init__(self, service: UsageService) -> None:
        self.service = service

    async def usage_report(self, kind: str, start: float, end: float,
                           team: str | None) -> Report | None:  # fmt: skip
        return await self.service.report(kind, start, end, team)


async def serve_stalls(url: str, days: int) -> None:
    """The longest wait of a 1 ms timer on the API's event loop while it serves the month."""
    first_day, last_day = utc_date(START), utc_date(START + (days - 1) * DAY)
    with open_store(url) as store:
        app = build_app(_Backend(UsageService(store, None)), CollectorRegistry(),  # type: ignore[arg-type]
                        api_token=None)  # fmt: skip
        async with TestClient(TestServer(app)) as http:
            for fmt in ("csv", "json"):
                waits: list[float] = []
                done = asyncio.Event()
                ticking = asyncio.create_task(_timer(waits, done))
                started = time.perf_counter()
                answer = await http.get(f"/api/v1/usage/tasks?from={first_day}&to={last_day}"
                                        f"&format={fmt}")  # fmt: skip
                size = len(await answer.read())
                took = time.perf_counter() - started
                done.set()
                await ticking
                print(f"API, tasks report as {fmt}: {size / 2**20:.1f} MiB in {took:.2f}s; the "
                      f"event loop's longest stall meanwhile {max(waits) * 1000:.0f} ms",
                      flush=True)


async def _timer(waits: list[float], done: asyncio.Event) -> None:
    """Every 1 ms until ``done``, noting how long each turn really took."""
    last = time.perf_counter()
    while not done.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        waits.append(now - last)
        last = now


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
        asyncio.run(serve_stalls(url, args.days))
    print(f"result: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
