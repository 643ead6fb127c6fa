"""The coordinator's web dashboard, in a real headless Chromium against a fake API backend.

Each test serves ``coordinator/static`` through ``coordinator.api.build_app`` on a free
loopback port and reads what the page shows, so it checks the markup, the script and the
API's JSON shapes together.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from coordinator.api import ApiBackend, Handler, Json, UnknownNode, build_app
from coordinator.definitions import GPU_BUCKETS, GPUS_TOTAL, UNASSIGNED, terms_json
from coordinator.ledger.report import Period, Report, SummaryRow
from tests.cdp import CHROMIUM, CdpConnection, Page, chromium

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

STATIC_DIR = Path(__file__).resolve().parents[1] / "coordinator" / "static"
SCREENSHOT = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard.png"

NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: the page shows times in UTC under test
HOSTILE_NAME = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
BLANK = "\u2013"  # the en dash the page shows where there is no value
PAUSED_REASON = "2 of 4 nodes out of service (50%), over --max-unhealthy 10%"


def _node(
    name: str,
    *,
    lifecycle: str = "healthy",
    health: str = "healthy",
    action: str = "none",
    reason: str = "",
    gpus: tuple[int, int] = (8, 8),
    instance_type: str = "p5.48xlarge",
    agent: str = "online",
    last_seen: float = NOW - 3,
    schedulable: bool = True,
) -> Json:
    return {
        "name": name, "lifecycle": lifecycle, "since": NOW - 600, "health": health,
        "action": action, "reason": reason, "schedulable": schedulable,
        "gpus_healthy": gpus[0], "gpus_total": gpus[1], "instance_type": instance_type,
        "agent": agent, "last_seen": last_seen, "boot_id": f"boot-{len(name)}", "hold": False,
    }  # fmt: skip


def _gpu(index: int, *, health: str = "healthy", action: str = "none", lost: bool = False) -> Json:
    return {
        "index": index, "uuid": f"GPU-{index:04d}", "health": health, "action": action,
        "lost": lost, "utilization_pct": None if lost else 50.0 + index,
        "memory_used_bytes": 40 * 2**30, "memory_total_bytes": 80 * 2**30, "processes": 1,
    }  # fmt: skip


def _fleet() -> list[Json]:
    return [
        _node("gpu-a-01"),
        _node(
            "gpu-a-02", lifecycle="pending-reboot", health="unhealthy", action="reboot",
            reason="XID-79: GPU 3 fell off the bus", gpus=(7, 8), schedulable=False,
        ),
        _node(
            "gpu-b-01", lifecycle="suspect", health="unknown", gpus=(4, 4),
            instance_type="p4d.24xlarge", agent="offline", last_seen=NOW - 95,
        ),
        _node(HOSTILE_NAME, reason="<b>not bold</b>", gpus=(8, 8)),
    ]  # fmt: skip


def _cluster() -> Json:
    return {
        "cluster": "ml-cluster",
        "nodes_total": 4,
        "nodes_by_lifecycle": {"healthy": 2, "suspect": 1, "pending-reboot": 1},
        "capacity": {
            "gpus_total": 28, "gpus_healthy": 19, "gpus_unhealthy": 1,
            "gpus_pending_recovery": 8,
        },
        "by_instance_type": {
            "p4d.24xlarge": {"nodes": 1, "gpus_total": 4, "gpus_healthy": 4,
                             "gpus_unhealthy": 0, "gpus_pending_recovery": 0},
            "p5.48xlarge": {"nodes": 3, "gpus_total": 24, "gpus_healthy": 15,
                            "gpus_unhealthy": 1, "gpus_pending_recovery": 8},
        },
        "definitions": terms_json(),
        "utilization_pct": 63.5,
        "remediation_paused": True,
        "paused_reason": PAUSED_REASON,
        "leader": True,
        "dry_run": True,
        "ingest": {"connected": True, "accepted": 1200, "rejected": 3, "accepted_per_s": 2.0},
        "ts": NOW,
    }  # fmt: skip


def _teams() -> list[Json]:
    return [
        {"name": "research", "namespace": "research", "quota": 16, "guarantee": 16,
         "allocated": 20, "in_use": 18, "borrowed": 4, "lent": 0, "utilization_pct": 71.25},
        {"name": "inference", "namespace": "serving", "quota": 8, "guarantee": 8,
         "allocated": 2, "in_use": 1, "borrowed": 0, "lent": 3, "utilization_pct": None},
    ]  # fmt: skip


def _classes() -> list[Json]:
    return [
        {"name": "real-time-inference", "weight": 100, "running": 3, "pending": 1,
         "preempted": 0, "avg_wait_s": 1500.0, "avg_run_s": 4500.0, "longest_wait_s": 42.0,
         "longest_run_s": 90061.0},
        {"name": "training", "weight": 70, "running": 5, "pending": 9, "preempted": 2,
         "avg_wait_s": 0.0, "avg_run_s": 61.0, "longest_wait_s": 3600.0,
         "longest_run_s": 7260.0},
    ]  # fmt: skip


def _audit() -> list[Json]:
    def entry(i: int, kind: str, **extra: Any) -> Json:
        row: Json = {
            "id": i, "ts": NOW - 60 * i, "kind": kind, "actor": "coordinator-0", "node": None,
            "task": None, "team": None, "action": None, "reason": "", "details": {},
            "outcome": None, "dry_run": False, "started_id": None,
        }  # fmt: skip
        row.update(extra)
        return row

    return [
        entry(3, "action_finished", node="gpu-a-02", action="reboot", outcome="ok",
              dry_run=True, started_id=2, reason="XID-79"),
        entry(2, "action_started", node="gpu-a-02", action="reboot", dry_run=True,
              reason="XID-79"),
        entry(1, "policy", task="llama-ft", team="research", action="preempt",
              reason="<i>higher priority</i>"),
    ]  # fmt: skip


def _detail(node: Json) -> Json:
    body = dict(node)
    broken = node["name"] == "gpu-a-02"
    body["gpus"] = [
        _gpu(i, health="unhealthy", action="reboot", lost=True) if broken and i == 3 else _gpu(i)
        for i in range(node["gpus_total"])
    ]
    body["findings"] = (
        [{"check": "xid", "severity": "critical", "code": "XID-79",
          "message": "GPU has fallen off the bus", "action": "reboot", "gpu_index": 3,
          "unknown": False, "first_seen": NOW - 180, "count": 2}]
        if broken else []
    )  # fmt: skip
    body["history"] = (
        [{"ts": NOW - 170, "event": "healthy -> pending-reboot", "actor": "coordinator-0",
          "reason": "fault-needs-reboot: XID 79 on GPU 3 at 23:57 UTC", "dry_run": True}]
        if broken else []
    )  # fmt: skip
    body["last_event"] = (
        {"code": "XID-79", "severity": "critical", "action": "reboot", "gpu_index": 3,
         "at": NOW - 120}
        if broken else None
    )  # fmt: skip
    body["driver_version"] = "550.90.07"
    return body


@dataclass
class FakeBackend:
    """The read side of :class:`coordinator.api.ApiBackend` from plain data the tests edit."""

    cluster_body: Json = field(default_factory=_cluster)
    node_rows: list[Json] = field(default_factory=_fleet)
    team_rows: list[Json] = field(default_factory=_teams)
    unassigned_line: Json | None = field(
        default_factory=lambda: {"gpus": 4, "used": 1, "idle": 3}
    )
    class_rows: list[Json] = field(default_factory=_classes)
    audit_rows: list[Json] = field(default_factory=_audit)
    audit_limits: list[int] = field(default_factory=list)
    broken: bool = False
    usage_asked: list[tuple[str, float, float]] = field(default_factory=list)

    def _answer(self) -> None:
        if self.broken:
            raise RuntimeError("the fake backend was told to fail")

    def health(self) -> tuple[bool, Json]:
        return True, {"status": "ok"}

    def cluster(self) -> Json:
        self._answer()
        return copy.deepcopy(self.cluster_body)

    def nodes(self) -> list[Json]:
        self._answer()
        return copy.deepcopy(self.node_rows)

    def node(self, name: str) -> Json | None:
        self._answer()
        found = [n for n in self.node_rows if n["name"] == name]
        return _detail(found[0]) if found else None

    async def marks(self, name: str) -> Json | None:
        return None

    def audit(self, since: float | None, node: str | None, limit: int) -> list[Json]:
        self._answer()
        self.audit_limits.append(limit)
        return copy.deepcopy(self.audit_rows[:limit])

    def teams(self) -> list[Json]:
        self._answer()
        return copy.deepcopy(self.team_rows)

    def unassigned(self) -> Json | None:
        return copy.deepcopy(self.unassigned_line)

    def tasks(self) -> list[Json]:
        return []

    def priority_classes(self) -> list[Json]:
        self._answer()
        return copy.deepcopy(self.class_rows)

    async def clear(self, node: str, actor: str, reason: str) -> Json:
        raise UnknownNode(node)

    async def hold(self, node: str, actor: str, reason: str) -> Json:
        raise UnknownNode(node)

    async def usage_report(self, kind: str, start: float, end: float,
                           team: str | None) -> Report | None:  # fmt: skip
        self.usage_asked.append((kind, start, end))
        day = "2025-12-31"
        rows = (
            SummaryRow("2025-12-30", "research", "p5.48xlarge", 100.0, 10, 0, 60, 5, 100, None),
            SummaryRow(day, "research", "p5.48xlarge", 150.0, 20, 0, 90, 5, 150, None),
            SummaryRow(day, "inference", "p4d.24xlarge", 30.0, 0, 8, 20, 0, 30, None),
        )
        gap = Period("node", "gpu-b-01", NOW - 7200, NOW - 3600, "silent")
        return Report("summary", start, end, NOW, (gap,), rows)


def _serves_the_api(backend: FakeBackend) -> ApiBackend:
    return backend  # mypy checks here that the fake keeps up with the Protocol


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CdpConnection]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    async with chromium(tmp_path_factory.mktemp("chromium")) as connection:
        yield connection


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest_asyncio.fixture(loop_scope="module")
async def dashboard(browser: CdpConnection, backend: FakeBackend) -> AsyncIterator[Page]:
    """The dashboard, open and past its first complete poll of ``backend``."""
    app = build_app(
        _serves_the_api(backend), CollectorRegistry(), api_token=None, static_dir=str(STATIC_DIR)
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    page = await browser.new_page()
    try:
        await page.navigate(str(server.make_url("/")))
        await page.wait_for("document.getElementById('freshness').textContent !== 'loading…'")
        yield page
        assert page.errors == [], f"the page reported errors: {page.errors}"
    finally:
        await browser.close_page(page)
        await server.close()


async def _text(page: Page, element_id: str) -> str:
    value = await page.evaluate(f"document.getElementById({json.dumps(element_id)}).textContent")
    assert isinstance(value, str)
    return value.strip()


async def _rows(page: Page, table_id: str) -> list[list[str]]:
    rows = await page.evaluate(
        f"[...document.querySelectorAll('#{table_id} tbody tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.textContent))"
    )
    assert isinstance(rows, list)
    return rows


async def _visible(page: Page, element_id: str) -> bool:
    shown = await page.evaluate(
        f"document.getElementById({json.dumps(element_id)}).offsetParent !== null"
    )
    return bool(shown)


async def _click_node(page: Page, name: str) -> None:
    index = [row[0] for row in await _rows(page, "nodes-table")].index(name)
    await page.click(f"#nodes-table tbody tr:nth-child({index + 1})")
    await page.wait_for(
        f"document.getElementById('detail-name').textContent === {json.dumps(name)} && "
        "document.querySelectorAll('#detail-gpus tbody tr').length > 0"
    )


async def test_cluster_tiles_show_the_backend_capacity(
    dashboard: Page, backend: FakeBackend
) -> None:
    cap = backend.cluster_body["capacity"]
    assert await _text(dashboard, "stat-nodes") == str(backend.cluster_body["nodes_total"])
    assert await _text(dashboard, "stat-gpus-total") == str(cap["gpus_total"])
    assert await _text(dashboard, "stat-gpus-healthy") == str(cap["gpus_healthy"])
    assert await _text(dashboard, "stat-gpus-unhealthy") == str(cap["gpus_unhealthy"])
    assert await _text(dashboard, "stat-gpus-pending") == str(cap["gpus_pending_recovery"])
    assert await _text(dashboard, "stat-utilization") == "63.5%"


async def test_in_service_counts_the_schedulable_nodes(
    dashboard: Page, backend: FakeBackend
) -> None:
    schedulable = sum(1 for n in backend.node_rows if n["schedulable"])
    assert await _text(dashboard, "stat-in-service") == str(schedulable)


async def test_instance_type_table_shows_capacity_per_type(
    dashboard: Page, backend: FakeBackend
) -> None:
    expected = [
        [name, *(str(c[k]) for k in ("nodes", "gpus_total", "gpus_healthy", "gpus_unhealthy",
                                     "gpus_pending_recovery"))]
        for name, c in backend.cluster_body["by_instance_type"].items()
    ]  # fmt: skip
    assert await _rows(dashboard, "instance-types") == expected


async def test_leader_and_dry_run_badges_show(dashboard: Page) -> None:
    assert await _text(dashboard, "badge-leader") == "leader"
    assert await _visible(dashboard, "badge-dry-run")


async def test_paused_remediation_shows_a_banner_with_its_reason(dashboard: Page) -> None:
    assert await _visible(dashboard, "paused-banner")
    assert await _text(dashboard, "paused-reason") == PAUSED_REASON


@pytest.mark.parametrize(
    "backend",
    [FakeBackend(cluster_body={**_cluster(), "remediation_paused": False})],
    ids=["not-paused"],
)
async def test_running_remediation_shows_no_banner(dashboard: Page) -> None:
    assert not await _visible(dashboard, "paused-banner")


async def test_nodes_table_shows_one_row_per_node_with_its_fields(
    dashboard: Page, backend: FakeBackend
) -> None:
    expected = [
        [n["name"], n["lifecycle"], n["health"], n["action"],
         f"{n['gpus_healthy']}/{n['gpus_total']}", n["instance_type"], n["agent"],
         n["reason"] or BLANK]
        for n in backend.node_rows
    ]  # fmt: skip
    shown = [row[:7] + row[8:] for row in await _rows(dashboard, "nodes-table")]
    assert shown == expected


async def test_last_seen_is_an_age_on_the_coordinators_clock(dashboard: Page) -> None:
    ages = {row[0]: row[7] for row in await _rows(dashboard, "nodes-table")}
    assert ages["gpu-a-01"] == "3s ago"
    assert ages["gpu-b-01"] == "1m 35s ago"


async def test_only_health_cells_of_unhealthy_nodes_are_coloured_unhealthy(
    dashboard: Page,
) -> None:
    marked = await dashboard.evaluate(
        "[...document.querySelectorAll('#nodes-table .health-unhealthy')]"
        ".map((td) => [td.parentElement.cells[0].textContent, td.cellIndex])"
    )
    assert marked == [["gpu-a-02", 2]]


async def test_clicking_a_node_row_shows_its_gpus_findings_and_last_event(
    dashboard: Page,
) -> None:
    await _click_node(dashboard, "gpu-a-02")
    gpus = await _rows(dashboard, "detail-gpus")
    assert len(gpus) == 8
    assert gpus[3][:4] == ["3", "GPU-0003", "unhealthy (lost)", "reboot"]
    assert gpus[0][4:] == ["50.0%", "40.0 / 80.0 GiB", "1"]
    assert await _rows(dashboard, "detail-findings") == [
        ["3", "XID-79", "critical", "reboot", "2025-12-31 23:57:00", "2",
         "GPU has fallen off the bus", "xid"]
    ]  # fmt: skip
    assert await _text(dashboard, "detail-last-event") == (
        "Last fault event: XID-79 (critical, action reboot) on GPU 3 at 2025-12-31 23:58:00"
    )
    await dashboard.screenshot(SCREENSHOT)
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


async def test_the_selected_row_is_marked_and_the_hash_names_it(dashboard: Page) -> None:
    await _click_node(dashboard, "gpu-b-01")
    selected = await dashboard.evaluate(
        "[...document.querySelectorAll('#nodes-table tr.selected')]"
        ".map((tr) => tr.cells[0].textContent)"
    )
    assert selected == ["gpu-b-01"]
    assert await dashboard.evaluate("location.hash") == "#node=gpu-b-01"


async def test_a_healthy_node_detail_says_it_has_no_findings(dashboard: Page) -> None:
    await _click_node(dashboard, "gpu-a-01")
    assert await _visible(dashboard, "detail-no-findings")
    assert not await _visible(dashboard, "detail-findings")
    assert await _text(dashboard, "detail-last-event") == "No fault event recorded."


async def test_a_node_that_disappears_says_so_in_the_detail_panel(
    dashboard: Page, backend: FakeBackend
) -> None:
    await _click_node(dashboard, "gpu-a-01")
    backend.node_rows = [n for n in backend.node_rows if n["name"] != "gpu-a-01"]
    await dashboard.wait_for("document.getElementById('detail-missing').offsetParent !== null")
    assert not await _visible(dashboard, "detail-body")


async def test_closing_the_detail_panel_hides_it(dashboard: Page) -> None:
    await _click_node(dashboard, "gpu-a-01")
    await dashboard.click("#detail-close")
    await dashboard.wait_for("document.getElementById('node-detail').hidden")
    assert await dashboard.evaluate("location.hash") == ""


async def test_a_node_name_with_a_script_tag_is_shown_as_text_and_never_run(
    dashboard: Page,
) -> None:
    names = [row[0] for row in await _rows(dashboard, "nodes-table")]
    assert HOSTILE_NAME in names
    await _click_node(dashboard, HOSTILE_NAME)
    assert await _text(dashboard, "detail-name") == HOSTILE_NAME
    assert await dashboard.evaluate("window.__pwned === undefined")
    injected = await dashboard.evaluate(
        "document.querySelectorAll('main script, main img, main b, main i').length"
    )
    assert injected == 0


async def test_teams_table_shows_each_team_and_the_unassigned_line(
    dashboard: Page, backend: FakeBackend
) -> None:
    assert await _rows(dashboard, "teams-table") == [
        ["research", "research", "16", "16", "20", "18", "4", "0", "71.3%"],
        ["inference", "serving", "8", "8", "2", "1", "0", "3", BLANK],
        ["(unassigned)", BLANK, BLANK, "4", "1", BLANK, BLANK, "1", BLANK],
    ]
    assert not await _visible(dashboard, "teams-off")


async def test_the_teams_lent_column_adds_up_to_the_borrowed_one(dashboard: Page) -> None:
    assert await _text(dashboard, "teams-balance") == (
        "Borrowed 4 = lent by teams 3 + unassigned in use 1"
    )
    title = await dashboard.evaluate(
        "document.querySelector('#teams-table tbody tr:last-child td').title"
    )
    assert title == UNASSIGNED.definition


async def test_gpu_numbers_are_labelled_and_defined_in_tooltips_from_the_api(
    dashboard: Page,
) -> None:
    tiles = await dashboard.evaluate(
        "[...document.querySelectorAll('#cluster dt[data-term]')]"
        ".map((dt) => [dt.textContent, dt.title])"
    )
    assert tiles == [[t.label, t.definition] for t in (GPUS_TOTAL, *GPU_BUCKETS)]


async def test_a_node_detail_shows_its_lifecycle_history(dashboard: Page) -> None:
    await _click_node(dashboard, "gpu-a-02")
    assert await _rows(dashboard, "detail-history") == [
        ["2025-12-31 23:57:10", "healthy -> pending-reboot (dry-run)", "coordinator-0",
         "fault-needs-reboot: XID 79 on GPU 3 at 23:57 UTC"],
    ]  # fmt: skip


async def test_priority_classes_table_shows_counts_and_times(dashboard: Page) -> None:
    assert await _rows(dashboard, "classes-table") == [
        ["real-time-inference", "100", "3", "1", "0", "1h 15m", "25m", "1d 1h", "42s"],
        ["training", "70", "5", "9", "2", "1m 1s", "0s", "2h 1m", "1h"],
    ]


@pytest.mark.parametrize(
    "backend", [FakeBackend(team_rows=[], class_rows=[])], ids=["governance-off"]
)
async def test_without_teams_and_classes_the_page_says_governance_off(dashboard: Page) -> None:
    assert await _text(dashboard, "teams-off") == "governance off"
    assert await _text(dashboard, "classes-off") == "governance off"
    assert not await _visible(dashboard, "teams-table")
    assert not await _visible(dashboard, "classes-table")


async def test_audit_table_shows_the_latest_20_entries(
    dashboard: Page, backend: FakeBackend
) -> None:
    assert 20 in backend.audit_limits
    assert await _rows(dashboard, "audit-table") == [
        ["2025-12-31 23:57:00", "action_finished", "coordinator-0", "gpu-a-02", BLANK, BLANK,
         "reboot", "ok (dry-run)", "XID-79"],
        ["2025-12-31 23:58:00", "action_started", "coordinator-0", "gpu-a-02", BLANK, BLANK,
         "reboot", f"{BLANK} (dry-run)", "XID-79"],
        ["2025-12-31 23:59:00", "policy", "coordinator-0", BLANK, "llama-ft", "research",
         "preempt", BLANK, "<i>higher priority</i>"],
    ]  # fmt: skip


async def test_panels_update_in_place_when_the_backend_changes(
    dashboard: Page, backend: FakeBackend
) -> None:
    await dashboard.evaluate("window.__same_document = true")
    backend.cluster_body["capacity"]["gpus_healthy"] = 27
    backend.cluster_body["utilization_pct"] = 12.0
    backend.cluster_body["ts"] = NOW + 2
    backend.node_rows[1]["health"] = "healthy"
    await dashboard.wait_for("document.getElementById('stat-gpus-healthy').textContent === '27'")
    await dashboard.wait_for(
        "document.querySelector('#nodes-table tbody tr:nth-child(2)').cells[2].textContent"
        " === 'healthy'"
    )
    assert await dashboard.evaluate("window.__same_document") is True
    assert await _text(dashboard, "stat-utilization") == "12.0%"


async def test_a_poll_updates_node_rows_in_place_so_keyboard_focus_survives(
    dashboard: Page, backend: FakeBackend
) -> None:
    await dashboard.evaluate("document.querySelector('#nodes-table tbody tr').focus()")
    backend.cluster_body["ts"] = NOW + 10
    await dashboard.wait_for(
        "document.querySelector('#nodes-table tbody tr').cells[7].textContent === '13s ago'"
    )
    focused = await dashboard.evaluate(
        "document.activeElement === document.querySelector('#nodes-table tbody tr')"
    )
    assert focused is True


async def test_the_utilization_chart_keeps_one_sample_per_new_reading(
    dashboard: Page, backend: FakeBackend
) -> None:
    await dashboard.wait_for("document.getElementById('util-chart').dataset.samples === '1'")
    backend.cluster_body["utilization_pct"] = 80.0
    backend.cluster_body["ts"] = NOW + 2
    label = await dashboard.wait_for(
        "document.getElementById('util-chart').dataset.samples === '2' && "
        "document.getElementById('util-chart').getAttribute('aria-label')"
    )
    assert label == "GPU utilization: latest 80.0%, 2 samples over the last 2s"


async def test_the_chart_forgets_samples_older_than_ten_minutes(
    dashboard: Page, backend: FakeBackend
) -> None:
    backend.cluster_body["ts"] = NOW + 2
    await dashboard.wait_for("document.getElementById('util-chart').dataset.samples === '2'")
    backend.cluster_body["utilization_pct"] = 10.0
    backend.cluster_body["ts"] = NOW + 601
    label = await dashboard.wait_for(
        "document.getElementById('util-chart').getAttribute('aria-label').includes('10.0%') &&"
        "document.getElementById('util-chart').getAttribute('aria-label')"
    )
    # the reading at NOW is past ten minutes old and gone; the one at NOW + 2 is not
    assert label == "GPU utilization: latest 10.0%, 2 samples over the last 9m 59s"


async def test_a_failing_api_shows_a_stale_banner_and_keeps_the_last_data(
    dashboard: Page, backend: FakeBackend
) -> None:
    backend.broken = True
    await dashboard.wait_for("document.getElementById('api-error').offsetParent !== null")
    assert "HTTP 500" in await _text(dashboard, "api-error")
    assert await _text(dashboard, "stat-gpus-total") == "28"
    assert await _text(dashboard, "freshness") == "stale"


async def test_until_the_coordinator_first_answers_the_page_says_it_is_loading(
    browser: CdpConnection, backend: FakeBackend
) -> None:
    answer = asyncio.Event()

    @web.middleware
    async def hold_the_api(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            await answer.wait()
        return await handler(request)

    app = build_app(backend, CollectorRegistry(), api_token=None, static_dir=str(STATIC_DIR))
    app.middlewares.append(hold_the_api)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    page = await browser.new_page()
    try:
        await page.navigate(str(server.make_url("/")))
        assert await _visible(page, "loading")
        assert (await _text(page, "loading")).startswith("Loading: asking the coordinator")
        assert not await _visible(page, "content")  # no dash in every field meanwhile
        answer.set()
        await page.wait_for("document.getElementById('content').offsetParent !== null")
        assert not await _visible(page, "loading")
        assert await _text(page, "stat-gpus-total") == "28"
        assert page.errors == []
    finally:
        await browser.close_page(page)
        await server.close()


async def test_the_usage_chart_draws_gpu_hours_per_team_and_day(dashboard: Page) -> None:
    await dashboard.wait_for("document.getElementById('usage-chart').dataset.days === '2'")
    chart = await dashboard.evaluate(
        "({...document.getElementById('usage-chart').dataset})"
    )
    assert chart["teams"] == "inference,research"
    assert chart["totals"] == "100.0,180.0"
    assert await _text(dashboard, "usage-legend") == "inferenceresearch"


async def test_the_usage_panel_states_its_missing_data(dashboard: Page) -> None:
    await dashboard.wait_for("document.getElementById('usage-chart').dataset.days === '2'")
    assert await _text(dashboard, "usage-missing") == (
        "Missing data: gpu-b-01 2025-12-31 22:00:00 to 2025-12-31 23:00:00"
    )


async def test_the_export_button_downloads_the_chosen_range_as_csv(
    dashboard: Page, backend: FakeBackend
) -> None:
    await dashboard.wait_for("document.getElementById('usage-chart').dataset.days === '2'")
    await dashboard.evaluate(
        "(() => { const s = document.getElementById('usage-range'); s.value = '30';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    await dashboard.wait_for(
        "document.getElementById('usage-export').getAttribute('href').includes('2025-12-03')"
    )
    link = "document.getElementById('usage-export')"
    href = await dashboard.evaluate(f"{link}.getAttribute('href')")
    assert href == "/api/v1/usage/summary?from=2025-12-03&to=2026-01-01&format=csv"
    assert await dashboard.evaluate(f"{link}.hasAttribute('download')")
