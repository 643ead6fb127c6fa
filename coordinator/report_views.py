"""What ``gpuwarden report summary|tasks`` show as tables. Pure, like :mod:`coordinator.views`."""

from __future__ import annotations

from coordinator.ledger.report import Report, SummaryRow, TaskRow, header_lines, utc_time
from coordinator.tables import Column, Row, Table, duration


def _h(value: float) -> str:
    return f"{value:,.1f}"


def report_view(report: Report) -> list[Table]:
    note = " ".join(header_lines(report)[1:])
    if report.kind == "summary":
        return [_summary(report, note)]
    return [_tasks(report, note)]


def _summary(report: Report, note: str) -> Table:
    cost = f"Cost ({report.currency})" if report.currency else "Cost"
    columns = (
        Column("Date", 0), Column("Team", 0), Column("Instance type", 3),
        Column("Allocated GPU-h", 1, right=True), Column("Borrowed GPU-h", 2, right=True),
        Column("Lent GPU-h", 2, right=True), Column("Used GPU-h", 1, right=True),
        Column("Idle-allocated GPU-h", 2, right=True), Column(cost, 4, right=True),
    )  # fmt: skip
    rows: list[Row] = [
        (r.date, r.team, r.instance_type, _h(r.allocated_gpu_h), _h(r.borrowed_gpu_h),
         _h(r.lent_gpu_h), _h(r.used_gpu_h), _h(r.idle_allocated_gpu_h),
         None if r.cost is None else f"{r.cost:,.2f}")
        for r in report.rows if isinstance(r, SummaryRow)
    ]  # fmt: skip
    return Table(columns, rows, title=header_lines(report)[0], note=note)


def _tasks(report: Report, note: str) -> Table:
    columns = (
        Column("Task", 0), Column("Team", 2), Column("Status", 1), Column("Priority class", 4),
        Column("Start (UTC)", 3), Column("End (UTC)", 5), Column("Ran", 3, right=True),
        Column("GPU-h", 1, right=True), Column("Borrowed GPU-h", 4, right=True),
        Column("Preemptions", 5, right=True), Column("Requeues", 5, right=True),
        Column("Lost GPU-h", 4, right=True), Column("Mean util", 2, right=True),
    )  # fmt: skip
    rows: list[Row] = [
        (r.task, r.team, r.status, r.priority_class, utc_time(r.start), utc_time(r.end),
         duration(None if r.start is None else (r.end or report.generated_at) - r.start),
         _h(r.gpu_h), _h(r.borrowed_gpu_h), r.preemptions, r.requeues, _h(r.lost_gpu_h),
         None if r.utilization_pct is None else f"{r.utilization_pct:.1f}%")
        for r in report.rows if isinstance(r, TaskRow)
    ]  # fmt: skip
    return Table(columns, rows, title=header_lines(report)[0], note=note)
