"""A service: its own database, its operations, and nothing about sagas.

Its database is a SQLite file in the data directory (the default) or a schema of its own
on PostgreSQL, shared by every replica of the service (``Settings.service_database``).

An operation takes effect one of two ways, and returns a JSON-able result:

- in the service's own database: a plain function of ``(db, payload)`` (an action) or of
  ``(db, payload, action_output)`` (a compensation) that writes its effect through ``db``
  inside the transaction it is given, atomic with the ledger's record of it;
- through an outside system that takes an idempotency key (a payment provider's HTTP
  API), declared ``outside=True``: a function of ``(payload, key)`` or ``(payload,
  action_output, key)`` that hands ``key`` on with its request. A run that dies after
  the call and before the ledger recorded its answer calls again with the same key, and
  the outside system answers as it did the first time; the ledger keeps that answer.

Either raises :class:`BusinessError` for a refusal and :class:`TransientError` for a
passing fault.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from saga_core import database, migrations
from saga_core.config import Settings
from saga_core.database import Connection, Location
from saga_core.errors import MalformedCommand
from workers import ledger
from workers import migrations as service_migrations
from workers.lease import FileLeases, InTransaction, Leases

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    name: str  # also the Celery task name
    func: Callable[..., Any]
    undoes: str | None = None  # set on a compensation: the action it undoes
    outside: bool = False  # its effect is made through an outside system, by key

    @property
    def is_compensation(self) -> bool:
        return self.undoes is not None


@dataclass
class Service:
    name: str  # also the queue name
    #: its tables: a folder of Alembic revisions, whose first creates the ledger's tables
    #: too (``create_ledger_tables``), and the newest of them; none: the ledger alone
    migrations: Path | None = None
    head: str | None = None
    operations: dict[str, Operation] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _leases: dict[Path, FileLeases] = field(default_factory=dict, repr=False)

    def action(self, name: str, *, outside: bool = False) -> Callable[[F], F]:
        """Register ``func`` as action ``name``: ``func(db, payload)``, or with ``outside``
        ``func(payload, key)``."""

        def register(func: F) -> F:
            self.operations[name] = Operation(name, func, outside=outside)
            return func

        return register

    def compensation(self, name: str, undoes: str, *, outside: bool = False) -> Callable[[F], F]:
        """Register ``func`` as compensation ``name`` of action ``undoes``:
        ``func(db, payload, action_output)``, or with ``outside``
        ``func(payload, action_output, key)``."""

        def register(func: F) -> F:
            self.operations[name] = Operation(name, func, undoes, outside)
            return func

        return register

    def where(self, place: Location | Path) -> Location:
        """The service's database: ``place`` itself, or its SQLite file in the data
        directory ``place``."""
        if isinstance(place, Location):
            return place
        return Settings(data_dir=Path(place)).service_database(self.name)

    def database(self, place: Location | Path) -> Connection:
        """This thread's connection to the service's own database, created on first use."""
        where = self.where(place)
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.where != where:
            conn = self._open(where)
            self._local.conn, self._local.where = conn, where
        return conn

    def leases(self, place: Location | Path) -> Leases:
        """The leases on this service's keys (see :mod:`workers.lease`): every replica's,
        where the database is shared; else every worker's on this host."""
        where = self.where(place)
        if where.dialect != database.SQLITE:
            return InTransaction()
        path = where.path.with_suffix(".leases")
        if path not in self._leases:
            self._leases[path] = FileLeases(path)
        return self._leases[path]

    def prepare(self, place: Location | Path) -> None:
        """Create the database now, so that one that cannot be written fails at start;
        nothing is kept open (a prefork worker forks after this)."""
        self._open(self.where(place)).close()

    def _open(self, where: Location) -> Connection:
        conn = database.connect(where)
        migrations.upgrade(
            conn,
            self.head or service_migrations.LEDGER_ONLY_HEAD,
            self.migrations or service_migrations.LEDGER_ONLY,
            adopt=_made_before_alembic,
        )
        return conn

    def run(
        self,
        db: Connection,
        operation: str,
        key: str,
        payload: dict[str, Any],
        before_effect: Callable[[], None] | None = None,
        first: bool = False,
    ) -> tuple[Any, bool]:
        """Run ``operation`` for idempotency ``key``; returns ``(output, fresh)``.
        ``first``: this is the key's first delivery (``ledger.run_action``)."""
        op = self.operations[operation]
        # an outside system's key: the step's, and apart for its action and compensation
        outside_key = f"{key}/{op.name}"
        if op.is_compensation:

            def undo(out: Any) -> Any:
                if op.outside:
                    return _checked(op.name, op.func, payload, out, outside_key)
                return _checked(op.name, op.func, db, payload, out)

            return ledger.run_compensation(db, key, op.name, undo)

        def effect() -> Any:
            if before_effect is not None:
                before_effect()
            if op.outside:
                return _checked(op.name, op.func, payload, outside_key)
            return _checked(op.name, op.func, db, payload)

        return ledger.run_action(db, key, op.name, effect, first=first and not op.outside)


def _checked(name: str, func: Callable[..., Any], *args: Any) -> Any:
    """Run an operation; a payload it cannot read is refused, since no retry can mend it."""
    try:
        return func(*args)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedCommand(f"{name}: malformed payload ({type(exc).__name__}: {exc})") from exc


def _made_before_alembic(connection: Any) -> str | None:
    """A database a release before Alembic made has the ledger's table: its first revision."""
    if connection.dialect.name != "sqlite":
        return None  # services came to PostgreSQL with Alembic
    found = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'idempotency'"
    ).scalar()
    return "0001" if found else None
