"""Usage reports from the ledger's rows. Pure: rows in, a :class:`Report` out, and its JSON
and CSV forms. Both forms state the range and every missing-data period in it, so that a
number is never read as complete when it is not.

Days are UTC days; amounts are GPU-hours.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import msgspec

from coordinator.ledger.accrue import DAY
from coordinator.ledger.prices import Prices

H = 3600.0
PLACES = 6
"""GPU-hours are rounded to a millionth (3.6 ms of one GPU) once, where a row is built."""


@dataclass(frozen=True)
class Period:
    """A span whose usage is not (fully) known."""

    kind: str
    """``coordinator``: nothing was recorded; ``node``: a node's use was not measured."""
    subject: str
    start: float
    end: float
    reason: str


# Rows are named tuples, not dataclasses: a month's task report builds 100,000 of them, and a
# tuple goes to the CSV writer as it is.
class SummaryRow(NamedTuple):
    date: str
    team: str
    instance_type: str
    allocated_gpu_h: float
    borrowed_gpu_h: float
    lent_gpu_h: float
    used_gpu_h: float
    idle_allocated_gpu_h: float
    measured_gpu_h: float
    cost: float | None


class TaskRow(NamedTuple):
    task: str
    team: str
    priority_class: str
    status: str
    start: float | None
    end: float | None
    gpus: int
    gpu_h: float
    borrowed_gpu_h: float
    preemptions: int
    requeues: int
    lost_gpu_h: float
    """Work since the last checkpoint thrown away by faults and preemptions."""
    utilization_pct: float | None
    """Mean over the task's measured GPU-time."""


@dataclass(frozen=True)
class Report:
    kind: str
    start: float
    end: float
    generated_at: float
    missing: tuple[Period, ...]
    rows: tuple[SummaryRow, ...] | tuple[TaskRow, ...]
    currency: str | None = None


_ENCODER = msgspec.json.Encoder()


def utc_date(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def utc_time(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def missing_periods(
    coverage: Sequence[Sequence[Any]],
    missing: Sequence[Sequence[Any]],
    start: float,
    end: float,
    now: float,
    grace_s: float,
) -> tuple[Period, ...]:
    """Gaps in the coordinators' coverage within ``[start, end)`` (up to ``now`` less
    ``grace_s``, the span a running coordinator has not flushed yet), and node silences."""
    horizon = min(end, now - grace_s)
    out: list[Period] = []
    t = start
    for started, ended, _writer in sorted(coverage, key=lambda row: float(row[0])):
        if started > t and t < horizon:
            out.append(_gap(t, min(started, horizon)))
        t = max(t, ended)
    if t < horizon:
        out.append(_gap(t, horizon))
    for kind, subject, started, ended, reason in missing:
        if kind == "node":
            out.append(Period(kind, subject, max(start, started),
                              min(end, now if ended is None else ended), reason))  # fmt: skip
    return tuple(p for p in sorted(out, key=lambda p: (p.start, p.kind, p.subject))
                 if p.end > p.start)  # fmt: skip


def _gap(start: float, end: float) -> Period:
    return Period("coordinator", "coordinator", start, end,
                  "no coordinator recorded usage (stopped, restarting or failing over, or "
                  "before the ledger began)")  # fmt: skip


def summary_report(
    rows: Mapping[str, Sequence[Sequence[Any]]],
    start: float,
    end: float,
    now: float,
    *,
    prices: Prices | None = None,
    grace_s: float = 60.0,
) -> Report:
    out = []
    for day, team, itype, allocated, borrowed, lent, used, measured, idle in rows["teams"]:
        allocated_h = _gpu_h(allocated)
        out.append(SummaryRow(
            utc_date(day), team, itype, allocated_h, _gpu_h(borrowed), _gpu_h(lent),
            _gpu_h(used), _gpu_h(idle), _gpu_h(measured), _cost(prices, itype, allocated_h),
        ))  # fmt: skip
    return Report(
        "summary", start, end, now,
        missing_periods(rows["coverage"], rows["missing"], start, end, now, grace_s),
        tuple(out), None if prices is None else prices.currency,
    )  # fmt: skip


def tasks_report(
    rows: Mapping[str, Sequence[Sequence[Any]]],
    start: float,
    end: float,
    now: float,
    *,
    grace_s: float = 60.0,
) -> Report:
    out = [
        TaskRow(
            task, team or "", klass or "", status, first, last, gpus, round(allocated / H, PLACES),
            round(borrowed / H, PLACES), preemptions, requeues,
            round((lost_fault + lost_preemption) / H, PLACES),
            round(100.0 * used / measured, 1) if measured else None,
        )
        for (task, _queued, team, klass, gpus, first, last, status, preemptions, requeues,
             allocated, borrowed, used, measured, _idle, lost_fault, lost_preemption)
        in rows["tasks"]
    ]  # fmt: skip
    return Report(
        "tasks", start, end, now,
        missing_periods(rows["coverage"], rows["missing"], start, end, now, grace_s),
        tuple(out),
    )


def _gpu_h(seconds: float) -> float:
    return round(seconds / H, PLACES)


def _cost(prices: Prices | None, instance_type: str, gpu_hours: float) -> float | None:
    cost = None if prices is None else prices.cost(instance_type, gpu_hours)
    return None if cost is None else round(cost, PLACES)


def header_lines(report: Report) -> list[str]:
    """What precedes the rows everywhere: the range and the missing data."""
    lines = [
        f"gpuwarden {report.kind} report, {utc_time(report.start)} to {utc_time(report.end)} "
        f"(UTC days), generated {utc_time(report.generated_at)}",
    ]
    if not report.missing:
        lines.append("missing data: none")
    for p in report.missing:
        who = "" if p.kind == "coordinator" else f" {p.subject}"
        lines.append(f"missing data: {p.kind}{who} {utc_time(p.start)} to {utc_time(p.end)}: "
                     f"{p.reason}")  # fmt: skip
    return lines


def to_json(report: Report) -> dict[str, Any]:
    return {**_json_envelope(report), "rows": [r._asdict() for r in report.rows]}


def _json_envelope(report: Report) -> dict[str, Any]:
    return {
        "kind": report.kind, "from": report.start, "to": report.end,
        "from_utc": utc_time(report.start), "to_utc": utc_time(report.end),
        "generated_at": report.generated_at, "timezone": "UTC", "units": "GPU-hours",
        "currency": report.currency,
        "missing": [asdict(p) for p in report.missing],
    }  # fmt: skip


# Reports are serialized in a worker thread, but a C-level encoder holds the GIL for all of
# one call: a month's 100,000 task rows in one call would stall the coordinator's event
# loop (its ingest, its fault handling) for the whole encoding. Rows go in chunks, and the
# event loop's thread takes its turn between two.
_CHUNK = 1000


def to_json_bytes(report: Report) -> bytes:
    """:func:`to_json`, encoded: the API's JSON body."""
    envelope = _ENCODER.encode({**_json_envelope(report), "rows": []})  # ends in `[]}`
    chunks = (
        _ENCODER.encode([r._asdict() for r in report.rows[at:at + _CHUNK]])[1:-1]
        for at in range(0, len(report.rows), _CHUNK)
    )
    return envelope[:-2] + b",".join(chunks) + b"]}"


def to_csv(report: Report) -> str:
    """Comment lines (``#``) with the range and missing data, then a header and the rows."""
    buffer = io.StringIO()
    for line in header_lines(report):
        buffer.write(f"# {line}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SummaryRow._fields if report.kind == "summary" else TaskRow._fields)
    for at in range(0, len(report.rows), _CHUNK):
        writer.writerows(report.rows[at:at + _CHUNK])  # None is written as an empty cell
    return buffer.getvalue()


def day_start(ts: float) -> float:
    return float(int(ts // DAY) * DAY)


class RangeError(ValueError):
    pass


def parse_range(start: str | None, end: str | None, now: float,
                default_days: int = 7) -> tuple[float, float]:  # fmt: skip
    """``--from``/``--to`` as UTC dates, both days included: ``[from 00:00, to+1 00:00)``.
    Without ``to``, today; without ``from``, ``default_days`` days up to ``to``."""
    last = _date(end, "to") if end else day_start(now)
    first = _date(start, "from") if start else last - (default_days - 1) * DAY
    if first > last:
        raise RangeError(f"from {start} is after to {end}: swap them")
    return first, last + DAY


def _date(text: str, name: str) -> float:
    import calendar  # noqa: PLC0415

    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%d")))
    except ValueError:
        raise RangeError(f"{name} {text!r}: expected a date like 2026-03-01 (UTC)") from None


def with_prices(report: Report, prices: Prices) -> Report:
    """The same summary with cost from ``prices`` (the reader's own table)."""
    import dataclasses  # noqa: PLC0415

    rows = tuple(
        r._replace(cost=_cost(prices, r.instance_type, r.allocated_gpu_h))
        for r in report.rows if isinstance(r, SummaryRow)
    )
    return dataclasses.replace(report, rows=rows, currency=prices.currency)


def from_json(data: Mapping[str, Any]) -> Report:
    """A report as the API serves it (:func:`to_json`), for the CLI."""
    kind = str(data["kind"])
    row_type: type[SummaryRow] | type[TaskRow] = SummaryRow if kind == "summary" else TaskRow
    names = set(row_type._fields)
    rows = tuple(row_type(**{k: v for k, v in r.items() if k in names}) for r in data["rows"])
    missing = tuple(Period(**p) for p in data["missing"])
    return Report(kind, float(data["from"]), float(data["to"]), float(data["generated_at"]),
                  missing, rows, data.get("currency"))  # type: ignore[arg-type]
