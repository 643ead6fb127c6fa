"""``gpuwarden report summary|tasks``: usage reports, from the coordinator's API or straight
from the store (a report of history should not need a running coordinator)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.parse
from collections.abc import Sequence

from rich.console import Console

from coordinator import client
from coordinator.ledger.prices import PricesError, load_prices
from coordinator.ledger.report import (
    RangeError,
    Report,
    from_json,
    header_lines,
    parse_range,
    to_csv,
    to_json,
    with_prices,
)
from coordinator.report_views import report_view
from coordinator.tables import show


def build_parser(prog: str = "gpuwarden report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Usage reports: GPU-hours per day, team and instance type "
        "(summary), or per task (tasks), with the missing-data periods of the range.")
    p.add_argument("kind", choices=("summary", "tasks"))
    p.add_argument("--from", dest="start", metavar="DATE",
                   help="first UTC day, e.g. 2026-03-01 (default: 6 days before --to)")
    p.add_argument("--to", dest="end", metavar="DATE",
                   help="last UTC day, included (default: today)")
    p.add_argument("--team", help="one team only")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (tab-separated when piped), csv or json (default table)")
    p.add_argument("--prices", metavar="FILE",
                   help="price table per instance type (YAML) for the cost column")
    p.add_argument("--api", default=os.environ.get("GPUWARDEN_API", "http://127.0.0.1:8080"),
                   help="the coordinator's HTTP address (default %(default)s)")
    p.add_argument("--store", default=os.environ.get("GPUWARDEN_STORE"),
                   help="read the store instead of the API: sqlite:///PATH or postgresql://...")
    return p


def main(argv: Sequence[str], prog: str = "gpuwarden report") -> int:
    args = build_parser(prog).parse_args(list(argv))
    try:
        start, end = parse_range(args.start, args.end, time.time())
        prices = load_prices(args.prices) if args.prices else None
        report = _from_store(args, start, end) if args.store else _from_api(args, start, end)
    except (RangeError, PricesError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except client.ApiUnreachable as exc:
        print(f"{prog}: {exc}; or read the store itself with --store URL", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the store: unreachable, refused
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    if prices is not None and report.kind == "summary":
        report = with_prices(report, prices)
    if args.format == "json":
        print(json.dumps(to_json(report), indent=2))
    elif args.format == "csv":
        print(to_csv(report), end="")
    else:
        _print_table(report)
    return 0


def _from_api(args: argparse.Namespace, start: float, end: float) -> Report:
    query = {"from": time.strftime("%Y-%m-%d", time.gmtime(start)),
             "to": time.strftime("%Y-%m-%d", time.gmtime(end - 1))}  # fmt: skip
    if args.team:
        query["team"] = args.team
    data = client.fetch(args.api, f"/api/v1/usage/{args.kind}?{urllib.parse.urlencode(query)}",
                        timeout_s=60.0)  # fmt: skip
    return from_json(data)


def _from_store(args: argparse.Namespace, start: float, end: float) -> Report:
    from coordinator.ledger.books import read_rows  # noqa: PLC0415
    from coordinator.ledger.report import summary_report, tasks_report  # noqa: PLC0415
    from coordinator.store import open_store  # noqa: PLC0415

    with open_store(args.store) as store:
        rows = read_rows(store, start, end, args.team, args.kind == "tasks")
    build = tasks_report if args.kind == "tasks" else summary_report
    return build(rows, start, end, time.time())


def _print_table(report: Report) -> None:
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    lines = show(report_view(report), width)
    if width is None:
        # a pipe gets the rows alone; the range and missing data go to the reader
        for header in header_lines(report):
            print(header, file=sys.stderr)
        for line in lines:
            print(line.plain)
        return
    console = Console(highlight=False)
    for line in lines:
        console.print(line, soft_wrap=True)
