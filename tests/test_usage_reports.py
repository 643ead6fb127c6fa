"""Usage reports end to end on a real store: the ledger records a small day, and the API, the
CLI and the pure report code read it back with the range and the missing data stated."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from coordinator import api as api_module
from coordinator.api import build_app
from coordinator.cli import main as gpuwarden
from coordinator.governance.tasks import Capacity, GovernanceState, Task, TaskState
from coordinator.ledger import service as service_module
from coordinator.ledger.accrue import AccrualConfig, Books, GpuReading, NodeReading, accrue, measure
from coordinator.ledger.books import LedgerBooks, read_rows
from coordinator.ledger.idle import IdleWatch
from coordinator.ledger.ledger import Ledger
from coordinator.ledger.observe import Holding, Observation, observe
from coordinator.ledger.prices import PricesError, parse_prices
from coordinator.ledger.report import (
    Period,
    Report,
    TaskRow,
    summary_report,
    tasks_report,
    to_csv,
    to_json,
    to_json_bytes,
)
from coordinator.ledger.service import UsageService
from coordinator.store import StoreError, StoreUrl, open_store
from coordinator.store.legacy import adopt_legacy_audit
from tests.governance_world import policy, team

H = 3600.0
DAY0 = 1_772_409_600.0  # 2026-03-02 00:00 UTC
POLICY = policy(team("research", 8), team("infer", 8))


def _state() -> GovernanceState:
    state = GovernanceState(Capacity.of_nodes({"gpu-1": 8, "gpu-2": 8}))
    task = Task("research", "llama", (8,), queued_at=DAY0, priority_class="mid")
    task.state, task.admitted_at, task.started_at = TaskState.RUNNING, DAY0 + H, DAY0 + H
    task.placement = {"gpu-1": 8}
    state.add(task)
    return state


def record_a_day(url: str) -> None:
    """research/llama holds gpu-1's 8 GPUs at 50 % from 01:00 to 03:00; the ledger ran from
    00:00 to 04:00 and was down from 04:00 to 05:00."""
    state = _state()
    reading = NodeReading(0.0, tuple(GpuReading(50.0) for _ in range(8)))
    with open_store(url) as store:
        ledger = Ledger(LedgerBooks(store, "replica-a"), lambda node: reading,
                        lambda: {"gpu-1": "p5.48xlarge", "gpu-2": "p5.48xlarge"},
                        AccrualConfig(stale_s=1e12), IdleWatch())  # fmt: skip
        task = state.task("research/llama")
        for t in (DAY0, DAY0 + H, DAY0 + 3 * H, DAY0 + 4 * H):
            if t == DAY0:
                task.state = TaskState.PENDING
            elif t == DAY0 + H:
                task.state = TaskState.RUNNING
            elif t == DAY0 + 3 * H:
                state.finish("research/llama", t)
                state.remove("research/llama")
            ledger.observe(observe(state, POLICY, t))
        pending = ledger.take(DAY0 + 4 * H)
        assert pending is not None
        ledger.write(pending)
        later = Ledger(LedgerBooks(store, "replica-a"), lambda node: reading, lambda: {},
                       AccrualConfig(stale_s=1e12), IdleWatch())  # fmt: skip
        later.observe(observe(state, POLICY, DAY0 + 5 * H))
        again = later.take(DAY0 + 6 * H)
        assert again is not None
        later.write(again)


def _report(url: str, kind: str = "summary") -> Report:
    with open_store(url) as store:
        rows = read_rows(store, DAY0, DAY0 + 86400, None, tasks=kind == "tasks")
    build = summary_report if kind == "summary" else tasks_report
    return build(rows, DAY0, DAY0 + 86400, DAY0 + 6 * H + 10)


def test_a_recorded_task_is_in_the_summary_with_its_used_and_allocated_hours(
    store_url: str,
) -> None:
    record_a_day(store_url)
    [row] = [r for r in _report(store_url).rows if r.team == "research"]  # type: ignore[union-attr]
    assert (row.date, row.instance_type) == ("2026-03-02", "p5.48xlarge")
    assert row.allocated_gpu_h == pytest.approx(16.0)
    assert row.used_gpu_h == pytest.approx(8.0)


def test_the_report_states_when_no_coordinator_recorded(store_url: str) -> None:
    record_a_day(store_url)
    gaps = [(p.kind, p.start, p.end) for p in _report(store_url).missing]
    # the minute since the last flush is not a gap: a running coordinator has not written it
    assert gaps == [("coordinator", DAY0 + 4 * H, DAY0 + 5 * H)]


def test_a_report_read_long_after_the_last_flush_says_nothing_was_recorded_since(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'gpuwarden.db'}"
    record_a_day(url)
    with open_store(url) as store:
        rows = read_rows(store, DAY0, DAY0 + 86400, None, tasks=False)
    report = summary_report(rows, DAY0, DAY0 + 86400, DAY0 + 2 * 86400)
    assert [(p.start, p.end) for p in report.missing][-1] == (DAY0 + 6 * H, DAY0 + 86400)


def test_the_task_report_has_the_tasks_window_status_and_mean_utilization(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gpuwarden.db'}"
    record_a_day(url)
    [row] = _report(url, "tasks").rows
    assert (row.task, row.status, row.start, row.end) == (  # type: ignore[union-attr]
        "research/llama", "finished", DAY0 + H, DAY0 + 3 * H)
    assert row.utilization_pct == 50.0  # type: ignore[union-attr]


def test_the_cli_reads_the_store_and_writes_csv_with_the_range_and_gaps_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'gpuwarden.db'}"
    record_a_day(url)
    prices = tmp_path / "prices.yaml"
    prices.write_text("currency: USD\ninstanceTypes:\n"
                      "  p5.48xlarge: {perInstanceHour: 80, gpusPerInstance: 8}\n")
    assert gpuwarden(["report", "summary", "--store", url, "--from", "2026-03-02",
                      "--to", "2026-03-02", "--format", "csv", "--prices", str(prices)]) == 0
    out = capsys.readouterr().out
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert comments[0].startswith("# gpuwarden summary report, 2026-03-02T00:00:00Z to "
                                  "2026-03-03T00:00:00Z")  # fmt: skip
    assert any("missing data: coordinator 2026-03-02T04:00:00Z to 2026-03-02T05:00:00Z" in c
               for c in comments)  # fmt: skip
    rows = list(csv.DictReader(io.StringIO("\n".join(
        line for line in out.splitlines() if not line.startswith("#")))))  # fmt: skip
    research = next(r for r in rows if r["team"] == "research")
    assert float(research["cost"]) == pytest.approx(160.0)  # 16 GPU-h at 10 a GPU-hour


def test_the_cli_says_what_to_do_with_a_date_it_cannot_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gpuwarden(["report", "tasks", "--from", "March 1st"]) == 2
    assert "expected a date like 2026-03-01" in capsys.readouterr().err


def test_the_cli_without_a_coordinator_names_the_store_as_the_way_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gpuwarden(["report", "summary", "--api", "http://127.0.0.1:9"]) == 1
    assert "--store URL" in capsys.readouterr().err


class _Backend:
    def __init__(self, url: str) -> None:
        self.url = url

    async def usage_report(self, kind: str, start: float, end: float,
                           team: str | None) -> Report | None:  # fmt: skip
        with open_store(self.url) as store:
            rows = read_rows(store, start, end, team, kind == "tasks")
        return summary_report(rows, start, end, DAY0 + 86400)


async def test_the_api_serves_the_summary_as_json_and_as_a_csv_download(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gpuwarden.db'}"
    record_a_day(url)
    app = build_app(_Backend(url), CollectorRegistry(), api_token=None)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as http:
        answer = await http.get("/api/v1/usage/summary?from=2026-03-02&to=2026-03-02")
        body = await answer.json()
        assert answer.headers["X-Gpuwarden-Range"] == "2026-03-02..2026-03-02 UTC"
        assert body["from_utc"] == "2026-03-02T00:00:00Z"
        assert [m["kind"] for m in body["missing"]] == ["coordinator", "coordinator"]
        download = await http.get("/api/v1/usage/summary?from=2026-03-02&to=2026-03-02"
                                  "&format=csv")  # fmt: skip
        assert download.headers["Content-Disposition"] == (
            'attachment; filename="gpuwarden-summary-2026-03-02-2026-03-02.csv"')
        assert (await download.text()).startswith("# gpuwarden summary report")
        refused = await http.get("/api/v1/usage/summary?from=2026-03-09&to=2026-03-02")
        assert refused.status == 400 and "swap them" in await refused.text()


class _ServiceBackend:
    """The daemon's way: reports from a :class:`UsageService` on the store."""

    def __init__(self, service: UsageService) -> None:
        self.service = service

    async def usage_report(self, kind: str, start: float, end: float,
                           team: str | None) -> Report | None:  # fmt: skip
        return await self.service.report(kind, start, end, team)


async def test_a_report_is_read_built_and_encoded_off_the_event_loops_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month's task report is 100,000 rows: built or encoded on the event loop, it held
    ingest and fault handling for a second."""
    url = f"sqlite:///{tmp_path / 'gpuwarden.db'}"
    record_a_day(url)
    threads: dict[str, set[int]] = {}

    def watched(module: object, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            threads.setdefault(name, set()).add(threading.get_ident())
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((service_module, "read_rows"), (service_module, "tasks_report"),
                         (api_module, "to_csv"), (api_module, "to_json_bytes")):  # fmt: skip
        watched(module, name)
    with open_store(url) as store:
        app = build_app(_ServiceBackend(UsageService(store, None)), CollectorRegistry(),
                        api_token=None)  # type: ignore[arg-type]  # fmt: skip
        async with TestClient(TestServer(app)) as http:
            as_json = await http.get("/api/v1/usage/tasks?from=2026-03-02&to=2026-03-02")
            as_csv = await http.get("/api/v1/usage/tasks?from=2026-03-02&to=2026-03-02"
                                    "&format=csv")  # fmt: skip
            rows = (await as_json.json())["rows"]
            text = await as_csv.text()
    assert [r["task"] for r in rows] == ["research/llama"]
    assert "research/llama" in text
    assert set(threads) == {"read_rows", "tasks_report", "to_csv", "to_json_bytes"}
    assert threading.get_ident() not in set().union(*threads.values())


def test_the_encoded_json_is_the_reports_json_across_chunks() -> None:
    row = TaskRow("research/llama", "research", "mid", "running", DAY0, None, 8, 1.5, 0.25,
                  1, 0, 0.0, 47.5)  # fmt: skip
    for count in (0, 1, 2500):
        report = Report("tasks", DAY0, DAY0 + 86400, DAY0 + 90000,
                        (Period("node", "gpu-1", DAY0, DAY0 + 60, "silent"),),
                        (row,) * count)  # fmt: skip

        assert json.loads(to_json_bytes(report)) == json.loads(json.dumps(to_json(report)))


def test_a_csv_written_in_chunks_has_every_row_once() -> None:
    rows = tuple(TaskRow(f"t/{n}", "t", "", "done", None, None, 1, 1.0, 0.0, 0, 0, 0.0, None)
                 for n in range(2500))  # fmt: skip
    report = Report("tasks", DAY0, DAY0 + 86400, DAY0 + 90000, (), rows)

    lines = [line for line in to_csv(report).splitlines() if line.startswith("t/")]

    assert lines == [f"t/{n},t,,done,,,1,1.0,0.0,0,0,0.0," for n in range(2500)]


# --- the pure parts --------------------------------------------------------------------------


def _holding(key: str, gpus: int, node: str = "n", team_name: str = "t",
             borrowed: int = 0) -> Holding:  # fmt: skip
    return Holding((key, 0.0), team_name, gpus, borrowed, ((node, gpus),), frozenset())


def test_each_nodes_reading_is_taken_once_per_observation(tmp_path: Path) -> None:
    """The coordinator builds a reading afresh from its model on every call: 2,000 nodes'
    worth each sample, once for silences and again for the shares, was a third of a
    sample's cost."""
    calls: list[str] = []

    def reading(node: str) -> NodeReading:
        calls.append(node)
        return NodeReading(DAY0, tuple(GpuReading(50.0) for _ in range(8)))

    with open_store(f"sqlite:///{tmp_path / 'gpuwarden.db'}") as store:
        ledger = Ledger(LedgerBooks(store, "replica-a"), reading, lambda: {},
                        AccrualConfig(stale_s=1e12), IdleWatch())  # fmt: skip
        ledger.observe(observe(_state(), POLICY, DAY0))

    assert sorted(calls) == ["gpu-1", "gpu-2"]


def test_without_owners_a_nodes_busiest_gpus_are_taken_as_the_allocated_ones() -> None:
    # 2 tasks hold 4 of 8 GPUs; the 4 busy ones run at 80 %, the 4 free ones idle
    reading = NodeReading(0.0, tuple(GpuReading(u) for u in (80, 80, 80, 80, 0, 0, 0, 0)))
    holdings = (_holding("a", 3), _holding("b", 1))
    shares = measure(holdings, lambda _: reading, 0.0, AccrualConfig())
    assert shares[("a", 0.0), "n"].busy == pytest.approx(2.4)
    assert shares[("b", 0.0), "n"].busy == pytest.approx(0.8)


def test_a_gpu_allocated_to_a_task_with_none_of_its_processes_counts_idle() -> None:
    owned = frozenset({"pod:u1"})
    reading = NodeReading(0.0, (GpuReading(90.0, owned), GpuReading(90.0)))
    holding = Holding(("a", 0.0), "t", 2, 0, (("n", 2),), owned)
    share = measure((holding,), lambda _: reading, 0.0, AccrualConfig())[("a", 0.0), "n"]
    assert (share.busy, share.idle) == (pytest.approx(0.9), 1)


def test_lent_gpu_hours_follow_the_instance_types_the_borrowed_gpus_run_on() -> None:
    books = Books()
    obs = Observation(0.0, (_holding("a", 4, "p5-node", "borrower", borrowed=4),),
                      {"lender": 4}, {}, ())  # fmt: skip
    accrue(books, obs, 3600.0, {}, {"p5-node": "p5.48xlarge"})
    assert books.teams[0, "lender", "p5.48xlarge"][2] == pytest.approx(4 * 3600.0)


def test_an_idle_task_is_flagged_only_after_the_idle_time_and_cleared_when_busy() -> None:
    from coordinator.ledger.accrue import TaskUse  # noqa: PLC0415

    watch = IdleWatch(threshold_pct=5, idle_after_s=600)
    key = ("a", 0.0)
    assert watch.update({key}, {key: TaskUse(8, 1.0)}, 0.0) == []
    [flagged] = watch.update({key}, {key: TaskUse(8, 2.0)}, 600.0)
    assert (flagged.flagged, flagged.since) == (True, 0.0)
    [cleared] = watch.update({key}, {key: TaskUse(8, 40.0)}, 700.0)
    assert cleared.flagged is False


def test_a_price_table_needs_a_price_per_gpu_hour_or_per_instance_hour() -> None:
    with pytest.raises(PricesError, match="perInstanceHour and gpusPerInstance"):
        parse_prices({"instanceTypes": {"p5": {"perInstanceHour": 98}}})
    assert parse_prices({"instanceTypes": {"p5": {"perGpuHour": 2}}}).cost("p5", 3) == 6


def test_a_store_url_says_what_it_expects() -> None:
    with pytest.raises(StoreError, match=r"sqlite:///PATH or postgresql://"):
        StoreUrl.parse("mysql://db")
    assert StoreUrl.parse("postgresql://u:secret@db:5432/gw").display == "postgresql://u@db:5432/gw"


def test_an_old_state_directorys_audit_log_becomes_the_store(tmp_path: Path) -> None:
    from coordinator.audit import AuditEntry, AuditKind, AuditLog  # noqa: PLC0415

    with AuditLog(tmp_path / "audit.sqlite3") as old:
        old.record(AuditEntry(kind=AuditKind.SYSTEM, actor="c", reason="before"))
    assert adopt_legacy_audit(tmp_path)
    with open_store(f"sqlite:///{tmp_path / 'gpuwarden.db'}") as store:
        assert [r.reason for r in AuditLog.on(store).query()] == ["before"]
    assert not adopt_legacy_audit(tmp_path)  # once only


def test_the_report_json_round_trips_for_the_cli() -> None:
    from coordinator.ledger.report import from_json, to_json  # noqa: PLC0415

    report = summary_report({"teams": [(DAY0, "t", "x", 3600, 0, 0, 1800, 3600, 0)],
                             "coverage": [(DAY0, DAY0 + 86400, "a")], "missing": []},
                            DAY0, DAY0 + 86400, DAY0 + 86400)  # fmt: skip
    assert from_json(json.loads(json.dumps(to_json(report)))) == report
