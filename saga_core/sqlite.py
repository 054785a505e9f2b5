"""Opening a SQLite database the way every part of the project wants it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from saga_core.errors import ConfigError

BUSY_TIMEOUT_MS = 10_000


def connect(path: Path | str, readonly: bool = False) -> sqlite3.Connection:
    """Open (creating if need be) a SQLite database in WAL mode with a busy timeout.

    The connection is in autocommit mode: every write goes through
    :func:`saga_core.database.transaction`. A ``readonly`` connection opens an existing database and
    can take no lock but a reader's.
    """
    path = Path(path)
    if readonly:
        return _connect_readonly(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enter_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        # With synchronous=NORMAL the only fsyncs are at checkpoints; checkpointing every
        # 8,000 pages (32 MB of WAL) instead of SQLite's 1,000 took the store from about
        # 5,000 to 8,000 transitions/s here (python -m bench, docs/benchmarks.md).
        conn.execute("PRAGMA wal_autocheckpoint = 8000")
        conn.execute("PRAGMA foreign_keys = ON")
    except (OSError, sqlite3.OperationalError) as exc:
        raise ConfigError(
            f"cannot open database {path}: {exc} (is SAGA_DATA_DIR writable?)"
        ) from exc
    conn.row_factory = sqlite3.Row
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except sqlite3.OperationalError as exc:
        raise ConfigError(f"cannot read database {path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    return conn


def _enter_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. The switch takes a lock the busy timeout does not wait for, so while
    another process holds the database (creating it, say: two processes starting at once)
    it is tried again until the busy timeout has passed."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the other process's transaction is short
