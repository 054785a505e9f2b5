"""The orchestrator's durable state: sagas and their steps in SQLite.

Only the orchestrator opens this database; service workers never do.
"""

import sqlite3
from pathlib import Path

from saga_core.sqlite import connect, transaction
from saga_store.models import (
    TERMINAL_STATES,
    Alert,
    Dispatch,
    Phase,
    SagaState,
    SagaView,
    StepSpec,
    StepState,
    StepView,
)
from saga_store.schema import HEAD, migrate, revision

__all__ = [
    "TERMINAL_STATES",
    "Alert",
    "Dispatch",
    "Phase",
    "SagaState",
    "SagaView",
    "StepSpec",
    "StepState",
    "StepView",
    "connect",
    "migrate",
    "open_reader",
    "open_store",
    "transaction",
]


def open_store(path: Path | str) -> sqlite3.Connection:
    """Open the saga database at ``path``, creating or upgrading its schema."""
    conn = connect(path)
    migrate(conn)
    return conn


def open_reader(path: Path | str) -> sqlite3.Connection:
    """A read-only connection to the saga database at ``path``, for what only reads (a
    metrics scrape, ``saga show``, the audit): it never takes the write lock. A store that
    does not exist yet, or is older than this code, is created or upgraded first."""
    path = Path(path)
    if not path.exists():
        open_store(path).close()
    conn = connect(path, readonly=True)
    if revision(conn) != HEAD:
        conn.close()
        open_store(path).close()
        conn = connect(path, readonly=True)
    return conn
