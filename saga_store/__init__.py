"""The orchestrator's durable state: sagas and their steps, in SQLite (the default: a file
in the data directory) or in schema ``saga`` of a PostgreSQL database.

Only the orchestrator's side opens this database; service workers never do.
"""

from pathlib import Path

from saga_core.database import SQLITE, Connection, Location, connect, location, transaction
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
    "SCHEMA",
    "TERMINAL_STATES",
    "Alert",
    "Connection",
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

#: The store's schema on PostgreSQL.
SCHEMA = "saga"


def _where(target: Location | Path | str) -> Location:
    return location(target, SCHEMA)


def open_store(target: Location | Path | str) -> Connection:
    """Open the saga store at ``target`` (a SQLite path, a URL, or a :class:`Location`),
    creating or upgrading its schema."""
    conn = connect(_where(target))
    migrate(conn)
    return conn


def open_reader(target: Location | Path | str) -> Connection:
    """A connection to the saga store for what only reads (a metrics scrape, ``saga
    show``, the audit): on SQLite a read-only one, which never takes the write lock. A
    store that does not exist yet, or is older than this code, is created or upgraded
    first."""
    where = _where(target)
    if where.dialect != SQLITE:
        return open_store(where)
    if where.absent:
        open_store(where).close()
    conn = connect(where, readonly=True)
    if revision(conn) != HEAD:
        conn.close()
        open_store(where).close()
        conn = connect(where, readonly=True)
    return conn
