"""The high-availability store: a PostgreSQL database both coordinator replicas reach.

psycopg 3. One connection per coordinator, calls serialized; a connection found broken is
opened again before the next transaction (a restarted or failed-over database server), and a
transaction cut off midway raises :class:`StoreError` for the caller to retry later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import psycopg

from coordinator.store.base import SCHEMA_VERSION, Closing, Row, StoreError, StoreUrl
from coordinator.store.schema import POSTGRESQL, refuse_newer

T = TypeVar("T")

# one number for every gpuwarden: replicas starting at once create the tables one at a time
_SCHEMA_LOCK = 0x67707577


@lru_cache(maxsize=512)
def _native(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the SQL written here has no other ``?`` or
    ``%``)."""
    return sql.replace("?", "%s")


class _Tx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._cur = conn.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if params:
            self._cur.execute(_native(sql), params)
        else:  # no parameters: psycopg leaves the text as it is, '%' included
            self._cur.execute(sql.encode())
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(_native(sql), rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cur.execute(_native(sql), params)
        return self._cur.fetchall()

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        self._cur.execute(_native(f"{sql} RETURNING id"), params)
        row = self._cur.fetchone()
        assert row is not None
        return int(row[0])


class PostgresStore(Closing):
    dialect = "postgresql"

    def __init__(self, url: StoreUrl, *, connect_timeout_s: int = 10) -> None:
        self.url = url
        self.display = url.display
        self._timeout = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            self._connect()
        try:
            self.run(self._setup)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            self._conn.close()
        try:
            self._conn = psycopg.connect(
                self.url.target, connect_timeout=self._timeout, application_name="gpuwarden"
            )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot reach the store {self.display} ({str(exc).strip()}); check the URL, "
                "that the server runs and accepts this user, and the password (PGPASSWORD or "
                "~/.pgpass)"
            ) from None
        return self._conn

    def _setup(self, tx: _Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
        found = tx.fetchall("SELECT to_regclass('gpuwarden_meta') IS NOT NULL")[0][0]
        if found:
            rows = tx.fetchall("SELECT value FROM gpuwarden_meta WHERE key = 'schema_version'")
            refuse_newer(int(rows[0][0]) if rows else 0, self.display)
        for statement in _statements(POSTGRESQL):
            tx.execute(statement)
        tx.execute(
            "INSERT INTO gpuwarden_meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )

    def run(self, work: Callable[[_Tx], T]) -> T:
        with self._lock:
            conn = self._connect()
            try:
                with conn.transaction():
                    return work(_Tx(conn))
            except psycopg.OperationalError as exc:
                raise StoreError(
                    f"the store {self.display} failed mid-transaction ({str(exc).strip()}); "
                    "nothing of it was kept, and the next call connects again"
                ) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _statements(script: str) -> list[str]:
    """The script's statements one by one (``$$`` bodies kept whole), run without
    parameters so that their ``%`` and ``?`` stay literal."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for part in script.split("$$"):
        if quoted:
            current.append("$$" + part + "$$")
        else:
            pieces = part.split(";")
            current.append(pieces[0])
            for piece in pieces[1:]:
                out.append("".join(current))
                current = [piece]
        quoted = not quoted
    out.append("".join(current))
    return [s.strip() for s in out if s.strip()]
