"""A bounded, ordered, write-ahead spool for fault events.

Every event is appended here *before* it is sent, and removed only after the broker has
acknowledged it (QoS 1 PUBACK). So an event raised while the broker is away, or while the
agent restarts, is delivered later, in order; a clean reconnect sends nothing twice. The
coordinator also deduplicates on ``event_id``, which covers the one window a crash between
PUBACK and unlink leaves open.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
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

    def append(self, topic: str, payload: bytes) -> None: ...

    def peek(self) -> SpooledEvent | None:
        """The oldest event not yet acknowledged."""
        ...

    def ack(self, key: int) -> None:
        """The broker has it: forget it."""
        ...

    def __len__(self) -> int: ...


class MemorySpool:
    """Survives broker outages, not agent restarts: the default without ``--spool``."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._items: deque[SpooledEvent] = deque()
        self._next = 0
        self._max = max_events
        self._lock = threading.Lock()
        self.dropped = 0

    def append(self, topic: str, payload: bytes) -> None:
        with self._lock:
            if len(self._items) >= self._max:
                self._items.popleft()
                self.dropped += 1
            self._items.append(SpooledEvent(self._next, topic, payload))
            self._next += 1

    def peek(self) -> SpooledEvent | None:
        with self._lock:
            return self._items[0] if self._items else None

    def ack(self, key: int) -> None:
        with self._lock:
            if self._items and self._items[0].key == key:
                self._items.popleft()

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
        self._keys: deque[int] = deque(
            sorted(int(p.name.removesuffix(self._SUFFIX)) for p in self._dir.glob("*.event"))
        )
        self._next = (self._keys[-1] + 1) if self._keys else 0

    def _path(self, key: int) -> Path:
        return self._dir / f"{key:020d}{self._SUFFIX}"

    def append(self, topic: str, payload: bytes) -> None:
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
            self._keys.append(key)
            while len(self._keys) > self._max:
                self._path(self._keys.popleft()).unlink(missing_ok=True)
                self.dropped += 1

    def peek(self) -> SpooledEvent | None:
        with self._lock:
            while self._keys:
                key = self._keys[0]
                try:
                    raw = self._path(key).read_bytes()
                except FileNotFoundError:
                    self._keys.popleft()
                    continue
                topic, _, payload = raw.partition(b"\n")
                return SpooledEvent(key, topic.decode(), payload)
            return None

    def ack(self, key: int) -> None:
        with self._lock:
            if self._keys and self._keys[0] == key:
                self._keys.popleft()
                with contextlib.suppress(FileNotFoundError):
                    self._path(key).unlink()

    def __len__(self) -> int:
        return len(self._keys)
