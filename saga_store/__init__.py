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
from saga_store.schema import migrate

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
    "open_store",
    "transaction",
]


def open_store(path: Path | str) -> sqlite3.Connection:
    """Open the saga database at ``path``, creating or upgrading its schema."""
    conn = connect(path)
    migrate(conn)
    return conn
