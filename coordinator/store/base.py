"""The store protocol, its URL and the one way to open it.

SQL is written once, in the subset SQLite and PostgreSQL share, with ``?`` placeholders (the
PostgreSQL store turns them into its own). Each call of :meth:`Store.run` is one transaction:
all of it lands, or none of it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 2
"""1: the audit log alone (``audit.sqlite3``); 2: the usage ledger beside it."""

Row = tuple[Any, ...]


class StoreError(RuntimeError):
    """The store cannot be used as asked: unreachable, refused, or written by a newer
    gpuwarden. The message says what to do next."""


class Transaction(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Rows changed."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT with ``RETURNING id`` appended; the new row's id."""
        ...


class Store(Protocol):
    dialect: str
    """``sqlite`` or ``postgresql``: the few statements that differ choose by it."""
    display: str
    """Where it is, safe to log (no password)."""

    def run(self, work: Callable[[Transaction], T]) -> T:
        """``work`` in one transaction, serialized with every other call on this store.
        Blocking: callers on the event loop use ``asyncio.to_thread``."""
        ...

    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *_exc: object) -> None: ...


class Closing:
    """``with store:`` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class StoreUrl:
    dialect: str
    target: str
    """A file path for SQLite; the libpq connection URL for PostgreSQL."""

    @classmethod
    def parse(cls, text: str) -> StoreUrl:
        """``sqlite:///ABSOLUTE/PATH``, ``sqlite:RELATIVE/PATH`` or ``postgresql://...``
        (``postgres://`` too)."""
        scheme, sep, rest = text.partition(":")
        scheme = scheme.lower()
        if sep and scheme == "sqlite":
            path = rest[2:] if rest.startswith("//") else rest
            if not path:
                raise StoreError(f"--store {text!r}: no file; e.g. sqlite:///var/lib/gpuwarden/"
                                 "gpuwarden.db")  # fmt: skip
            return cls("sqlite", path)
        if sep and scheme in {"postgresql", "postgres"}:
            return cls("postgresql", "postgresql:" + rest)
        raise StoreError(
            f"--store {text!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"
        )

    @property
    def display(self) -> str:
        if self.dialect == "sqlite":
            return f"sqlite:///{self.target.lstrip('/')}" if self.target.startswith("/") \
                else f"sqlite:{self.target}"
        parts = urllib.parse.urlsplit(self.target)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"postgresql://{user}{host}{port}{parts.path}"


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{(state_dir / 'gpuwarden.db').resolve()}"


def open_store(url: str | StoreUrl, *, durable: bool = True) -> Store:
    """Open (and create or upgrade) the store at ``url``. ``durable``: every transaction is on
    disk when :meth:`Store.run` returns (SQLite's synchronous=FULL; PostgreSQL always is)."""
    parsed = url if isinstance(url, StoreUrl) else StoreUrl.parse(url)
    if parsed.dialect == "sqlite":
        from coordinator.store.sqlite import SqliteStore  # noqa: PLC0415

        return SqliteStore(Path(parsed.target), durable=durable)
    from coordinator.store.postgres import PostgresStore  # noqa: PLC0415 - only HA needs it

    return PostgresStore(parsed)
