"""Upgrading a coordinator whose ``--state`` holds the audit log of before the store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

LEGACY_AUDIT = "audit.sqlite3"
STORE_FILE = "gpuwarden.db"


def adopt_legacy_audit(state_dir: Path) -> bool:
    """Move ``audit.sqlite3`` to ``gpuwarden.db`` when only the first exists, so the trail
    (and the restart's memory of pending actions) carries on in the new store; True when
    moved. Its write-ahead log is folded in first, so the one file holds everything."""
    old, new = state_dir / LEGACY_AUDIT, state_dir / STORE_FILE
    if new.exists() or not old.exists():
        return False
    with sqlite3.connect(old) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{old}{suffix}").unlink(missing_ok=True)
    old.rename(new)
    return True
