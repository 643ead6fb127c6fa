"""A bounded, ordered, write-ahead spool for fault events.

Every event is appended here *before* it is sent, and removed only when the *coordinator*
has acknowledged it (its ``ack`` message names the event): a broker's PUBACK only says the
broker has it, and a broker restart, or a coordinator not subscribed at that moment, loses
what the broker had. So an event raised while the broker or the coordinator is away, or
while the agent restarts, is delivered later; the coordinator deduplicates resends on
``event_id``. Acknowledgements may come in any order, so any event can be removed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class SpooledEvent:
    key: int
    topic: str
    payload: bytes


class Spool(Protocol):
    dropped: int

    def append(self, topic: str, payload: bytes) -> int:
        """Keep an event; returns its key (increasing)."""
        ...

    def pending(self) -> list[int]:
        """Keys of the events not yet acknowledged, oldest first."""
        ...

    def get(self, key: int) -> SpooledEvent | None: ...

    def peek(self) -> SpooledEvent | None:
        """The oldest event not yet acknowledged."""
        ...

    def ack(self, key: int) -> None:
        """The coordinator has it: forget it (a key already gone is ignored)."""
        ...

    def __len__(self) -> int: ...


class MemorySpool:
    """Survives broker outages, not agent restarts: the default without ``--spool``."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._items: dict[int, SpooledEvent] = {}  # insertion order is key order
        self._next = 0
        self._max = max_events
        self._lock = threading.Lock()
        self.dropped = 0

    def append(self, topic: str, payload: bytes) -> int:
        with self._lock:
            key = self._next
            self._next += 1
            self._items[key] = SpooledEvent(key, topic, payload)
            while len(self._items) > self._max:
                del self._items[next(iter(self._items))]
                self.dropped += 1
            return key

    def pending(self) -> list[int]:
        with self._lock:
            return list(self._items)

    def get(self, key: int) -> SpooledEvent | None:
        with self._lock:
            return self._items.get(key)

    def peek(self) -> SpooledEvent | None:
        with self._lock:
            return next(iter(self._items.values()), None)

    def ack(self, key: int) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class DirectorySpool:
    """One file per event, named by a zero-padded counter so that names sort in order.

    File format: the topic, a newline, the payload. A new file is written under a temporary
    name, fsynced and renamed, so a crash leaves either a whole event or none. Past
    ``max_events`` the oldest are dropped (and counted): a node stuck without a broker for
    days must not fill its disk.
    """

    _SUFFIX = ".event"

    def __init__(self, directory: Path, max_events: int = 10_000, *, fsync: bool = True) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max = max_events
        self._fsync = fsync
        self._lock = threading.Lock()
        self.dropped = 0
        for stale in self._dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        # insertion order is key order
        self._keys: dict[int, None] = dict.fromkeys(
            sorted(int(p.name.removesuffix(self._SUFFIX)) for p in self._dir.glob("*.event"))
        )
        self._next = (max(self._keys) + 1) if self._keys else 0

    def _path(self, key: int) -> Path:
        return self._dir / f"{key:020d}{self._SUFFIX}"

    def append(self, topic: str, payload: bytes) -> int:
        with self._lock:
            key = self._next
            self._next += 1
            tmp = self._dir / f"{key:020d}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, topic.encode() + b"\n" + payload)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            tmp.rename(self._path(key))
            self._keys[key] = None
            while len(self._keys) > self._max:
                oldest = next(iter(self._keys))
                del self._keys[oldest]
                self._path(oldest).unlink(missing_ok=True)
                self.dropped += 1
            return key

    def pending(self) -> list[int]:
        with self._lock:
            return list(self._keys)

    def get(self, key: int) -> SpooledEvent | None:
        with self._lock:
            if key not in self._keys:
                return None
            try:
                raw = self._path(key).read_bytes()
            except FileNotFoundError:
                del self._keys[key]
                return None
        topic, _, payload = raw.partition(b"\n")
        return SpooledEvent(key, topic.decode(), payload)

    def peek(self) -> SpooledEvent | None:
        while (keys := self.pending()):
            item = self.get(keys[0])
            if item is not None:
                return item
        return None

    def ack(self, key: int) -> None:
        with self._lock:
            if key not in self._keys:
                return
            del self._keys[key]
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()

    def __len__(self) -> int:
        return len(self._keys)
