"""A service: its own SQLite database, its operations, and nothing about sagas.

An operation is a plain function of ``(db, payload)`` (an action) or of
``(db, payload, action_output)`` (a compensation) that writes its effect through ``db``
inside the transaction it is given and returns a JSON-able result. It raises
:class:`BusinessError` for a refusal and :class:`TransientError` for a passing fault.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saga_core import migrations
from saga_core.errors import MalformedCommand
from saga_core.sqlite import connect
from workers import ledger
from workers import migrations as service_migrations
from workers.lease import Leases

Action = Callable[[sqlite3.Connection, dict[str, Any]], Any]
Compensation = Callable[[sqlite3.Connection, dict[str, Any], Any], Any]


@dataclass(frozen=True)
class Operation:
    name: str  # also the Celery task name
    func: Callable[..., Any]
    undoes: str | None = None  # set on a compensation: the action it undoes

    @property
    def is_compensation(self) -> bool:
        return self.undoes is not None


@dataclass
class Service:
    name: str  # also the queue name (its tables: workers/migrations/NAME)
    operations: dict[str, Operation] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _leases: dict[Path, Leases] = field(default_factory=dict, repr=False)

    def action(self, name: str) -> Callable[[Action], Action]:
        def register(func: Action) -> Action:
            self.operations[name] = Operation(name, func)
            return func

        return register

    def compensation(self, name: str, undoes: str) -> Callable[[Compensation], Compensation]:
        def register(func: Compensation) -> Compensation:
            self.operations[name] = Operation(name, func, undoes)
            return func

        return register

    def database(self, data_dir: Path) -> sqlite3.Connection:
        """This thread's connection to the service's own database, created on first use."""
        path = Path(data_dir) / f"{self.name}.db"
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.path != path:
            conn = self._open(path)
            self._local.conn, self._local.path = conn, path
        return conn

    def leases(self, data_dir: Path) -> Leases:
        """The leases on this service's keys (see :mod:`workers.lease`)."""
        path = Path(data_dir) / f"{self.name}.leases"
        if path not in self._leases:
            self._leases[path] = Leases(path)
        return self._leases[path]

    def prepare(self, data_dir: Path) -> None:
        """Create the database now, so that a data dir that cannot be written fails at
        start; nothing is kept open (a prefork worker forks after this)."""
        self._open(Path(data_dir) / f"{self.name}.db").close()

    def _open(self, path: Path) -> sqlite3.Connection:
        conn = connect(path)
        migrations.upgrade(
            conn,
            service_migrations.HEADS[self.name],
            service_migrations.SCRIPTS / self.name,
            adopt=_made_before_alembic,
        )
        return conn

    def run(
        self,
        db: sqlite3.Connection,
        operation: str,
        key: str,
        payload: dict[str, Any],
        before_effect: Callable[[], None] | None = None,
    ) -> tuple[Any, bool]:
        """Run ``operation`` for idempotency ``key``; returns ``(output, fresh)``."""
        op = self.operations[operation]
        if op.is_compensation:
            return ledger.run_compensation(
                db, key, op.name, lambda out: _checked(op.name, op.func, db, payload, out)
            )

        def effect() -> Any:
            if before_effect is not None:
                before_effect()
            return _checked(op.name, op.func, db, payload)

        return ledger.run_action(db, key, op.name, effect)


def _checked(name: str, func: Callable[..., Any], *args: Any) -> Any:
    """Run an operation; a payload it cannot read is refused, since no retry can mend it."""
    try:
        return func(*args)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedCommand(f"{name}: malformed payload ({type(exc).__name__}: {exc})") from exc


def _made_before_alembic(connection: Any) -> str | None:
    """A database a release before Alembic made has the ledger's table: its first revision."""
    found = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'idempotency'"
    ).scalar()
    return "0001" if found else None
