"""The embedded store: one SQLite file in WAL mode under ``--state``."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from coordinator.store.base import SCHEMA_VERSION, Closing, Row, StoreError
from coordinator.store.schema import SQLITE, refuse_newer

T = TypeVar("T")


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(sql, params).fetchall()

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        row = self._db.execute(f"{sql} RETURNING id", params).fetchone()
        return int(row[0])


class SqliteStore(Closing):
    """One connection, calls serialized by a lock: the coordinator's writes are small and a
    SQLite file takes one writer at a time anyway."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self.display = f"sqlite:///{path.resolve()}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {path} ({exc}); pick a writable directory") from None
        self._lock = threading.Lock()
        try:
            self._setup(durable)
        except BaseException:
            self._db.close()
            raise

    def _setup(self, durable: bool) -> None:
        refuse_newer(self._db.execute("PRAGMA user_version").fetchone()[0], str(self.path))
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        self._db.execute("PRAGMA foreign_keys = ON")
        # a second process (a report read from the file) waits its turn instead of failing
        self._db.execute("PRAGMA busy_timeout = 10000")
        self._db.executescript(SQLITE + f"PRAGMA user_version = {SCHEMA_VERSION};")

    def run(self, work: Callable[[_Tx], T]) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(_Tx(self._db))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._db.close()
