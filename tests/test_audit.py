from __future__ import annotations

import dataclasses
import datetime
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.audit import AuditEntry, AuditKind, AuditLog, AuditLogError, AuditRecord
from coordinator.store import StoreUrl, open_store

ME = "coordinator-0"


@pytest.fixture
def audit(store_url: str) -> Iterator[AuditLog]:
    """The audit log on each engine: the embedded SQLite file and a real PostgreSQL."""
    store = open_store(store_url, durable=False)
    with AuditLog.on(store) as log:
        yield log
    store.close()


def _raw(url: str, sql: str) -> None:
    """``sql`` from another connection than the log's: someone else at the database."""
    parsed = StoreUrl.parse(url)
    if parsed.dialect == "sqlite":
        with sqlite3.connect(parsed.target) as db:
            db.execute(sql)
        return
    import psycopg  # noqa: PLC0415

    with psycopg.connect(parsed.target, autocommit=True) as conn:
        conn.execute(sql.encode())


def _refused() -> tuple[type[Exception], ...]:
    import psycopg  # noqa: PLC0415

    return (sqlite3.DatabaseError, psycopg.Error)


def decision(node: str = "gpu-1", ts: float = 100.0, **changes: Any) -> AuditEntry:
    base = AuditEntry(
        kind=AuditKind.DECISION,
        actor=ME,
        node=node,
        action="mark_unhealthy",
        reason="XID-79",
        ts=ts,
    )
    return dataclasses.replace(base, **changes)


def started(node: str = "gpu-1", action: str = "mark_unhealthy") -> AuditEntry:
    return AuditEntry(kind=AuditKind.ACTION_STARTED, actor=ME, node=node, action=action)


def test_a_recorded_entry_reads_back_with_its_id(audit: AuditLog) -> None:
    entry = decision(details={"gpus": [0, 3]}, outcome="pending-reboot")
    entry_id = audit.record(entry)
    assert audit.get(entry_id) == AuditRecord(**vars(entry), id=entry_id)


def test_ids_increase_in_the_order_of_writing(audit: AuditLog) -> None:
    ids = [audit.record(decision()) for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_query_returns_newest_first(audit: AuditLog) -> None:
    for ts in (1.0, 2.0, 3.0):
        audit.record(decision(ts=ts))
    assert [r.ts for r in audit.query()] == [3.0, 2.0, 1.0]


def test_query_filters_by_node(audit: AuditLog) -> None:
    audit.record(decision(node="gpu-1"))
    audit.record(decision(node="gpu-2"))
    assert [r.node for r in audit.query(node="gpu-2")] == ["gpu-2"]


def test_query_filters_by_kind(audit: AuditLog) -> None:
    audit.record(decision())
    audit.record(started())
    assert [r.kind for r in audit.query(kind=AuditKind.ACTION_STARTED)] == [
        AuditKind.ACTION_STARTED
    ]


def test_query_since_is_inclusive_and_until_exclusive(audit: AuditLog) -> None:
    for ts in (1.0, 2.0, 3.0):
        audit.record(decision(ts=ts))
    assert [r.ts for r in audit.query(since=2.0, until=3.0)] == [2.0]


def test_query_filters_combine(audit: AuditLog) -> None:
    audit.record(decision(node="gpu-1", ts=1.0))
    audit.record(decision(node="gpu-1", ts=5.0))
    audit.record(decision(node="gpu-2", ts=5.0))
    assert [(r.node, r.ts) for r in audit.query(node="gpu-1", since=2.0)] == [("gpu-1", 5.0)]


def test_query_limit_keeps_the_newest(audit: AuditLog) -> None:
    for ts in (1.0, 2.0, 3.0):
        audit.record(decision(ts=ts))
    assert [r.ts for r in audit.query(limit=2)] == [3.0, 2.0]


def test_query_refuses_a_limit_out_of_range(audit: AuditLog) -> None:
    with pytest.raises(ValueError, match="limit"):
        audit.query(limit=0)


def test_last_for_node_is_the_newest_entry_about_it(audit: AuditLog) -> None:
    audit.record(decision(node="gpu-1", reason="first"))
    audit.record(decision(node="gpu-1", reason="second"))
    audit.record(decision(node="gpu-2", reason="other"))
    last = audit.last_for_node("gpu-1")
    assert last is not None and last.reason == "second"


def test_last_for_node_is_none_for_a_node_never_audited(audit: AuditLog) -> None:
    assert audit.last_for_node("gpu-9") is None


def test_details_that_json_cannot_hold_are_stored_as_text(audit: AuditLog) -> None:
    when = datetime.datetime(2025, 1, 2, tzinfo=datetime.UTC)
    entry_id = audit.record(decision(details={"at": when}))
    record = audit.get(entry_id)
    assert record is not None and record.details == {"at": str(when)}


def test_an_update_is_refused_by_the_database(audit: AuditLog, store_url: str) -> None:
    audit.record(decision())
    with pytest.raises(_refused(), match="append"):
        _raw(store_url, "UPDATE audit SET reason = 'nothing happened'")


def test_a_delete_is_refused_by_the_database(audit: AuditLog, store_url: str) -> None:
    audit.record(decision())
    with pytest.raises(_refused(), match="append"):
        _raw(store_url, "DELETE FROM audit")


def test_a_truncate_is_refused_by_postgresql(postgres_url: str) -> None:
    with open_store(postgres_url) as store, AuditLog.on(store) as audit:
        audit.record(decision())
        with pytest.raises(_refused(), match="append"):
            _raw(postgres_url, "TRUNCATE audit")
        assert audit.count() == 1


def test_the_log_offers_no_way_to_change_or_remove_entries() -> None:
    mutators = {"update", "delete", "remove", "edit", "clear", "truncate", "purge"}
    assert not {name for name in dir(AuditLog) if name.split("_")[0] in mutators}


def test_an_action_started_and_not_finished_is_pending_after_a_crash(store_url: str) -> None:
    crashed = open_store(store_url)
    log = AuditLog.on(crashed)
    cut_off = log.record(started(node="gpu-1"))
    done = log.record(started(node="gpu-2"))
    log.finish(done, actor=ME, outcome="ok")
    crashed.close()  # the process dies here; a new one opens the same store
    with open_store(store_url) as store:
        assert [r.id for r in AuditLog.on(store).pending_actions()] == [cut_off]


def test_two_replicas_on_one_postgresql_write_one_trail(postgres_url: str) -> None:
    with open_store(postgres_url) as first, open_store(postgres_url) as second:
        a = AuditLog.on(first).record(decision(node="gpu-1", actor="replica-a"))
        b = AuditLog.on(second).record(decision(node="gpu-2", actor="replica-b"))
        assert [r.id for r in AuditLog.on(first).query()] == [b, a]


def test_a_path_opens_an_embedded_log_of_its_own(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite3") as log:
        log.record(decision())
    with AuditLog(tmp_path / "audit.sqlite3") as log:
        assert log.count() == 1


def test_finish_copies_the_subject_and_links_the_start(audit: AuditLog) -> None:
    start_id = audit.record(started(node="gpu-1", action="reboot"))
    finish = audit.get(audit.finish(start_id, actor=ME, outcome="failed", reason="timeout"))
    assert finish is not None
    assert (finish.kind, finish.node, finish.action, finish.started_id, finish.outcome) == (
        AuditKind.ACTION_FINISHED,
        "gpu-1",
        "reboot",
        start_id,
        "failed",
    )


def test_finish_refuses_an_entry_that_is_not_a_started_action(audit: AuditLog) -> None:
    decision_id = audit.record(decision())
    with pytest.raises(AuditLogError):
        audit.finish(decision_id, actor=ME, outcome="ok")


def test_a_dry_run_start_stays_marked_dry_run_in_pending(audit: AuditLog) -> None:
    audit.record(AuditEntry(kind=AuditKind.ACTION_STARTED, actor=ME, node="n", dry_run=True))
    assert [r.dry_run for r in audit.pending_actions()] == [True]


def test_the_embedded_database_is_in_wal_mode(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite3") as audit, sqlite3.connect(audit.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_log_written_by_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(AuditLogError, match=r"newer gpuwarden.*refusing"):
        AuditLog(path)


def test_a_postgresql_store_written_by_a_newer_schema_is_refused(postgres_url: str) -> None:
    open_store(postgres_url).close()
    _raw(postgres_url, "UPDATE gpuwarden_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(AuditLogError, match=r"newer gpuwarden.*schema 99"):
        open_store(postgres_url)


def test_records_from_many_threads_all_land(audit: AuditLog) -> None:
    def write(n: int) -> None:
        for i in range(25):
            audit.record(decision(node=f"gpu-{n}", ts=float(i)))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert audit.count() == 100
