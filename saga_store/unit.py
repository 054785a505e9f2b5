"""A unit of work: the sagas one transaction changes, read once (locked) and written back
once, at its end.

The transitions (:mod:`saga_store.transitions`) decide on these in-memory records and never
write a statement themselves. So a batch of any size costs a fixed number of round trips to
the database: one to read and lock every saga of the batch with its steps, one to write
every change (grouped by statement, pipelined on PostgreSQL). That is what makes a shared
PostgreSQL as fast as a local SQLite file (docs/benchmarks.md, "The database layer").

Locks: a saga's row is the lock on the saga and all its steps. A unit locks its sagas in
id order in one statement, and writes their steps in (saga, step) order, so two units never
wait on each other in a circle. On SQLite the transaction's write lock already excludes
every other writer.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from saga_core import database
from saga_core.database import (
    Connection,
    insert_many,
    marks,
    planned_each_time,
    update_many,
)
from saga_core.errors import SagaNotFound, TransientError, TransitionRefused
from saga_store import queries
from saga_store.models import StepSpec, StepState

#: The step columns a transition may change (the rest are fixed at the saga's creation),
#: with their types.
STEP_CHANGES = (
    ("state", "text"),
    ("output", "json"),
    ("error", "text"),
    ("attempts", "integer"),
    ("compensation_attempts", "integer"),
    ("deadline_at", "float8"),
    ("heard_at", "float8"),
    ("held_by", "text"),
)
#: The saga columns a transition may change, with their types.
SAGA_CHANGES = (("state", "text"), ("updated_at", "text"), ("error", "text"))
SAGA_COLUMNS = (
    "id",
    "state",
    "input",
    "created_at",
    "updated_at",
    "definition",
    "idempotency_key",
    "error",
)
EVENT_COLUMNS = (
    "saga_id",
    "at",
    "event",
    "step_name",
    "phase",
    "attempt",
    "tries",
    "error",
    "note",
    "actor",
)

#: The counter rows this process adds to: processes that share a PostgreSQL store would
#: otherwise all wait on one row per counter. Readers add the shards up.
SHARD = os.getpid() % 16


@dataclass(slots=True)
class StepRecord:
    saga_id: str
    step_name: str
    position: int
    compensable: int
    best_effort: int
    timeout: float
    max_dispatches: int
    state: str
    output: str | None
    error: str | None
    attempts: int
    compensation_attempts: int
    deadline_at: float | None
    heard_at: float | None
    held_by: str | None

    @classmethod
    def pending(cls, saga_id: str, position: int, spec: StepSpec) -> StepRecord:
        """A new step, not yet sent."""
        return cls(
            saga_id,
            spec.name,
            position,
            int(spec.compensable),
            int(spec.best_effort),
            spec.timeout,
            spec.max_dispatches,
            StepState.PENDING.value,
            None,
            None,
            0,
            0,
            None,
            None,
            None,
        )

    def __getitem__(self, name: str) -> Any:  # read like a row (saga_store.machine.in_flight)
        return getattr(self, name)

    def changes(self) -> tuple[Any, ...]:
        return _step_changes(self)

    def values(self) -> tuple[Any, ...]:
        """Every column, in ``STEP_COLUMNS`` order."""
        return _step_values(self)


STEP_COLUMNS = tuple(f.name for f in fields(StepRecord))
# C-level readers of a record's fields: a transition reads and snapshots steps many times, and
# generator expressions over the fields were a fifth of the store's time (profiled).
_step_changes = attrgetter(*(name for name, _ in STEP_CHANGES))
_step_values = attrgetter(*STEP_COLUMNS)


@dataclass(slots=True)
class SagaRecord:
    id: str
    state: str
    definition: str
    input: str
    error: str | None
    updated_at: str
    steps: list[StepRecord] = field(default_factory=list)

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.step_name == name), None)

    def changes(self) -> tuple[Any, ...]:
        return (self.state, self.updated_at, self.error)

    def extra(self, idempotency_key: str | None) -> tuple[Any, ...]:
        """The columns past the design's five, as a new saga is inserted with them."""
        return (self.definition, idempotency_key, self.error)

    def snapshot(self) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        """Every field, as tuples: what :meth:`restore` makes the record again."""
        return _saga_values(self), [_step_values(s) for s in self.steps]

    @classmethod
    def restore(cls, snapshot: tuple[tuple[Any, ...], list[tuple[Any, ...]]]) -> SagaRecord:
        (saga_id, state, definition, saga_input, error, updated_at), steps = snapshot
        return cls(
            saga_id,
            state,
            definition,
            saga_input,
            error,
            updated_at,
            [StepRecord(*v) for v in steps],
        )


_saga_values = attrgetter("id", "state", "definition", "input", "error", "updated_at")


class Unit:
    """The sagas of one transaction on ``conn``, and everything it will write."""

    def __init__(self, conn: Connection, skip_locked: bool = False):
        self.conn = conn
        self.skip_locked = skip_locked
        self._sagas: dict[str, SagaRecord | None] = {}
        self._as_read: dict[str, tuple[tuple[Any, ...], list[tuple[Any, ...]]]] = {}
        self._new: dict[str, tuple[str, str | None]] = {}  # created here: (created_at, key)
        self._keys: dict[str, str | None] = {}  # idempotency key -> its saga (None: none)
        self.requests: list[tuple[Any, ...]] = []  # request keys to bind
        self._open_alerts: dict[str, bool] = {}
        self.events: list[tuple[Any, ...]] = []
        self.new_alerts: list[tuple[Any, ...]] = []
        self.closed_alerts: list[tuple[Any, ...]] = []
        self.counts: Counter[str] = Counter()

    # --- reading ------------------------------------------------------------------------

    def load(self, saga_ids: Iterable[str]) -> None:
        """Read and lock every one of ``saga_ids`` not read yet, with its steps: one round
        trip. A saga another transaction holds is waited for, or, with ``skip_locked``,
        left out (it then reads as busy)."""
        wanted = sorted({s for s in saga_ids if s not in self._sagas})
        if not wanted:
            return
        conn, lock = self.conn, database.for_update(self.conn, self.skip_locked)
        with database.pipeline(conn):
            sagas = conn.execute(
                planned_each_time(
                    "SELECT id, state, definition, input, error, updated_at FROM sagas "
                    f"WHERE id IN ({marks(wanted)}) ORDER BY id{lock}"
                ),
                wanted,
            )
            # After the lock, in a statement of its own: on PostgreSQL it then sees what
            # the transaction that held the lock wrote.
            steps = conn.execute(
                planned_each_time(
                    f"SELECT {', '.join(STEP_COLUMNS)} FROM saga_steps "
                    f"WHERE saga_id IN ({marks(wanted)}) ORDER BY saga_id, position"
                ),
                wanted,
            )
            saga_rows, step_rows = sagas.fetchall(), steps.fetchall()
        found = {r[0]: SagaRecord(*r) for r in saga_rows}
        for r in step_rows:
            saga = found.get(r[0])
            if saga is not None:  # skipped (locked elsewhere): its steps are not ours
                saga.steps.append(StepRecord(*r))
        for saga_id in wanted:
            saga = found.get(saga_id)
            self._sagas[saga_id] = saga
            if saga is not None:
                self._as_read[saga_id] = (saga.changes(), [s.changes() for s in saga.steps])
            elif self.skip_locked and queries.saga_exists(conn, saga_id):
                raise TransitionRefused(
                    "the saga is being changed by another transaction", saga_id=saga_id
                )

    def prefetch_keys(self, keys: Iterable[str]) -> None:
        """Read which of the idempotency ``keys`` name a saga already, in one query."""
        wanted = sorted({k for k in keys if k not in self._keys})
        if not wanted:
            return
        found = dict(
            self.conn.execute(
                planned_each_time(
                    "SELECT idempotency_key, id FROM sagas "
                    f"WHERE idempotency_key IN ({marks(wanted)})"
                ),
                wanted,
            ).fetchall()
        )
        for key in wanted:
            self._keys[key] = found.get(key)

    def saga_with_key(self, key: str) -> str | None:
        """The saga stored under idempotency ``key``, if any (this unit's new ones too)."""
        self.prefetch_keys([key])
        return self._keys[key]

    def add(self, saga: SagaRecord, created_at: str, idempotency_key: str | None) -> None:
        """A new saga, inserted at the end (as the unit's transitions leave it)."""
        if self._sagas.get(saga.id) is not None:
            raise ValueError(f"a saga with id {saga.id!r} exists already")
        self._sagas[saga.id] = saga
        self._new[saga.id] = (created_at, idempotency_key)
        if idempotency_key is not None:
            self._keys[idempotency_key] = saga.id

    def saga(self, saga_id: str) -> SagaRecord:
        """The saga (read and locked now where it was not yet); ``SagaNotFound``."""
        if saga_id not in self._sagas:
            self.load([saga_id])
        saga = self._sagas[saga_id]
        if saga is None:
            raise SagaNotFound(saga_id)
        return saga

    def exists(self, saga_id: str) -> bool:
        self.load([saga_id])
        return self._sagas[saga_id] is not None

    def has_open_alert(self, saga_id: str) -> bool:
        """Whether the saga has an alert not yet resolved (read once, then kept)."""
        if saga_id not in self._open_alerts:
            self._open_alerts[saga_id] = (
                self.conn.execute(
                    "SELECT 1 FROM alerts WHERE saga_id = ? AND resolved_at IS NULL LIMIT 1",
                    (saga_id,),
                ).fetchone()
                is not None
            )
        return self._open_alerts[saga_id]

    def open_alert_steps(self, saga_id: str) -> list[str]:
        """The steps of the saga's open alerts, oldest first (none once closed here)."""
        if any(c[2] == saga_id for c in self.closed_alerts):
            return []
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT step_name FROM alerts WHERE saga_id = ? AND resolved_at IS NULL "
                "ORDER BY id",
                (saga_id,),
            )
        ]

    # --- deciding -----------------------------------------------------------------------

    @contextmanager
    def attempt(self, saga_id: str) -> Iterator[SagaRecord]:
        """One transition on the saga: if it raises, the saga and the unit are as before
        (the in-memory savepoint)."""
        saga = self.saga(saga_id)
        # Tuples, not copies of the records: taken for every transition, used only for
        # the few that are refused (profiled: a seventh of a batch's time as copies).
        before = saga.snapshot()
        marks_ = (len(self.events), len(self.new_alerts), len(self.closed_alerts))
        counts, open_alerts = dict(self.counts), dict(self._open_alerts)
        try:
            yield saga
        except BaseException:
            self._sagas[saga_id] = SagaRecord.restore(before)
            del self.events[marks_[0] :], self.new_alerts[marks_[1] :]
            del self.closed_alerts[marks_[2] :]
            self.counts, self._open_alerts = Counter(counts), open_alerts
            raise

    def record(self, row: tuple[Any, ...]) -> None:
        """One event for the history: ``(saga_id, at, event, step_name, phase, attempt,
        tries, error, note, actor)``."""
        self.events.append(row)

    def count(self, name: str, by: int = 1) -> None:
        self.counts[name] += by

    def raise_alert(self, saga_id: str, step: str, error: str, created_at: str) -> None:
        self.new_alerts.append((saga_id, step, error, created_at))
        self._open_alerts[saga_id] = True

    def close_alerts(self, saga_id: str, resolved_at: str, resolution: str) -> None:
        self.closed_alerts.append((resolved_at, resolution, saga_id))
        self._open_alerts[saga_id] = False

    # --- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything the unit's transitions decided, a statement per kind of change
        (changed rows only, in lock order)."""
        sagas: list[tuple[Any, ...]] = []
        steps: list[tuple[Any, ...]] = []
        new_sagas: list[tuple[Any, ...]] = []
        new_steps: list[tuple[Any, ...]] = []
        for saga_id, saga in sorted(self._sagas.items()):
            if saga is None:
                continue
            if saga_id in self._new:
                created_at, key = self._new[saga_id]
                new_sagas.append(
                    (saga_id, saga.state, saga.input, created_at, saga.updated_at, *saga.extra(key))
                )
                new_steps.extend(s.values() for s in saga.steps)
                continue
            saga_then, steps_then = self._as_read[saga_id]
            if saga.changes() != saga_then:
                sagas.append((*saga.changes(), saga_id))
            for step, then in zip(saga.steps, steps_then, strict=True):
                if step.changes() != then:
                    steps.append((*step.changes(), saga_id, step.step_name))
        self._write(sagas, steps, new_sagas, new_steps)

    def _write(
        self,
        sagas: list[tuple[Any, ...]],
        steps: list[tuple[Any, ...]],
        new_sagas: list[tuple[Any, ...]],
        new_steps: list[tuple[Any, ...]],
    ) -> None:
        conn = self.conn
        with database.pipeline(conn):
            if new_sagas:
                # A key another process stored meanwhile fails the whole unit: the caller
                # tries again, and then finds that saga (see ``opened``).
                insert_many(conn, "sagas", SAGA_COLUMNS, new_sagas)
                insert_many(conn, "saga_steps", STEP_COLUMNS, new_steps)
            if self.closed_alerts:
                conn.executemany(
                    "UPDATE alerts SET resolved_at = ?, resolution = ? "
                    "WHERE saga_id = ? AND resolved_at IS NULL",
                    self.closed_alerts,
                )
            if sagas:
                update_many(conn, "sagas", SAGA_CHANGES, ("id",), sagas)
            if steps:
                update_many(conn, "saga_steps", STEP_CHANGES, ("saga_id", "step_name"), steps)
            if self.events:
                insert_many(conn, "saga_events", EVENT_COLUMNS, self.events)
            if self.new_alerts:
                conn.executemany(
                    "INSERT INTO alerts (saga_id, step_name, error, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    self.new_alerts,
                )
            if self.requests:
                conn.executemany(
                    "INSERT INTO request_keys (key, fingerprint, saga_id, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    self.requests,
                )
            counts = sorted((n, SHARD, by) for n, by in self.counts.items() if by)
            if counts:
                add_to_counters(conn, counts)


@contextmanager
def opened(conn: Connection, skip_locked: bool = False) -> Iterator[Unit]:
    """A unit in a transaction of its own, its writes committed when the block ends.

    On PostgreSQL the whole unit takes two round trips: the ``BEGIN`` goes with its first
    read (``Unit.load``), and its writes with the ``COMMIT``. A write that breaks a
    uniqueness rule (a key another process stored meanwhile) fails the whole unit with a
    ``TransientError``: tried again, the unit finds what the other one stored."""
    try:
        with database.pipeline(conn), database.transaction(conn):
            unit = Unit(conn, skip_locked)
            yield unit
            unit.flush()
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == "23505":  # PostgreSQL's unique_violation
            raise TransientError(f"stored by another process meanwhile: {exc}") from exc
        raise


def add_to_counters(conn: Connection, counts: list[tuple[str, int, int]]) -> None:
    """Add to counters: ``(name, shard, by)`` rows, in name order."""
    insert_many(
        conn,
        "counters",
        ("name", "shard", "value"),
        counts,
        " ON CONFLICT (name, shard) DO UPDATE SET value = counters.value + excluded.value",
    )
