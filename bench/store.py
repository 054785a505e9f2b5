"""The saga store alone: transitions per second, and filling it with finished sagas."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from bench.workload import order
from order_app import ORDER_SAGA
from saga_core.database import Location
from saga_store import open_store, transaction, transitions
from saga_store.models import iso

SPECS = ORDER_SAGA.specs(30.0, 5)

#: A completed saga's history, as the transitions write it: (event, step, phase, attempt, actor).
HISTORY: list[tuple[Any, ...]] = [
    ("created", None, None, None, "client"),
    ("started", None, None, None, "client"),
    *[
        (
            event,
            spec.name,
            "action",
            1,
            "client" if i == 0 and event == "dispatched" else "orchestrator",
        )
        for i, spec in enumerate(SPECS)
        for event in ("dispatched", "succeeded")
    ],
    ("completed", None, None, None, "orchestrator"),
]


def transitions_per_second(path: Location | Path, sagas: int = 2000) -> float:
    """Run ``sagas`` through create, start and four completions: six transitions each."""
    conn = open_store(path)
    t0 = time.perf_counter()
    for n in range(sagas):
        sid = uuid.uuid4().hex
        now = time.time()
        transitions.create_saga(conn, sid, "order", {"n": n}, SPECS, now, f"t-{sid}")
        transitions.start_saga(conn, sid, now)
        for spec in SPECS:
            transitions.complete_step(conn, sid, spec.name, {"ok": True}, now)
    return sagas * (2 + len(SPECS)) / (time.perf_counter() - t0)


class _Recording(sqlite3.Connection):
    """A SQLite connection that keeps every statement it runs, with its parameters."""

    calls: list[tuple[bool, str, Any]]

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.calls.append((False, sql, parameters))
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        rows = list(parameters)
        self.calls.append((True, sql, rows))
        return super().executemany(sql, rows)


def _renamed(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list | tuple):
        return type(value)(_renamed(v, old, new) for v in value)
    return value


def sqlite_floor_per_second(path: Path, sagas: int = 2000) -> float:
    """What SQLite alone does on this machine, today: the statements that one saga's six
    transitions run (``transitions_per_second``), recorded with their parameters and
    replayed for ``sagas`` new sagas on a fresh store, with none of the store's Python in
    between. The store's one-per-transaction figure can only approach it."""
    recorded = path.with_name(f"{path.stem}-recorded.db")
    open_store(recorded).close()
    conn = sqlite3.connect(recorded, factory=_Recording, isolation_level=None)
    conn.calls = []
    sid, now = uuid.uuid4().hex, time.time()
    transitions.create_saga(conn, sid, "order", {"n": 0}, SPECS, now, f"t-{sid}")
    transitions.start_saga(conn, sid, now)
    for spec in SPECS:
        transitions.complete_step(conn, sid, spec.name, {"ok": True}, now)
    calls = conn.calls
    conn.close()
    replays = []
    for _ in range(sagas):
        new = uuid.uuid4().hex
        replays.append([(many, sql, _renamed(params, sid, new)) for many, sql, params in calls])
    db = open_store(path)
    try:
        t0 = time.perf_counter()
        for replay in replays:
            for many, sql, params in replay:
                (db.executemany if many else db.execute)(sql, params)
        return sagas * (2 + len(SPECS)) / (time.perf_counter() - t0)
    finally:
        db.close()


def batched_transitions_per_second(
    where: Location | Path, sagas: int = 2000, batch: int = 200
) -> float:
    """As the orchestrator drives the store: ``sagas`` sagas created and started ``batch``
    submissions per transaction (their keys looked up in one query, as
    ``Engine.submit_many`` does), then their steps completed ``batch`` outcomes per
    transaction (``transitions.batch``); counts every transition."""
    conn = open_store(where)
    try:
        ids = [uuid.uuid4().hex for _ in range(sagas)]
        work = [(sid, None) for sid in ids] + [(sid, s.name) for s in SPECS for sid in ids]
        t0 = time.perf_counter()
        for i in range(0, len(work), batch):
            chunk = work[i : i + batch]
            with transitions.batch(conn, [sid for sid, step in chunk if step]) as unit:
                unit.prefetch_keys(f"b-{sid}" for sid, step in chunk if step is None)
                now = time.time()
                for sid, step in chunk:
                    if step is None:
                        transitions.create_saga(unit, sid, "order", {}, SPECS, now, f"b-{sid}")
                        transitions.start_saga(unit, sid, now)
                    else:
                        transitions.complete_step(unit, sid, step, {"ok": True}, now)
        return sagas * (2 + len(SPECS)) / (time.perf_counter() - t0)
    finally:
        conn.close()


def fill_finished(path: Location | Path, count: int, batch: int = 20_000) -> float:
    """Add ``count`` completed sagas (as the transitions leave them, history included) in
    large batches; returns the seconds it took."""
    conn = open_store(path)
    stored, _ = ORDER_SAGA.prepare(order("fill", 0))
    t0 = time.perf_counter()
    done = 0
    while done < count:
        n = min(batch, count - done)
        at = time.time()
        now = iso(at)
        sagas: list[tuple[Any, ...]] = []
        steps: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        for _ in range(n):
            sid = uuid.uuid4().hex
            sagas.append((sid, json.dumps(stored), now, now, f"order:fill-{sid}"))
            events.extend((sid, at, *event) for event in HISTORY)
            steps.extend(
                (
                    sid,
                    s.name,
                    i,
                    int(s.compensable),
                    int(s.best_effort),
                    s.timeout,
                    s.max_dispatches,
                )
                for i, s in enumerate(SPECS)
            )
        with transaction(conn):
            conn.executemany(
                "INSERT INTO sagas (id, state, input, created_at, updated_at, definition, "
                "idempotency_key) VALUES (?, 'completed', ?, ?, ?, 'order', ?)",
                sagas,
            )
            conn.executemany(
                "INSERT INTO saga_steps (saga_id, step_name, state, output, position, "
                "compensable, best_effort, timeout, max_dispatches, attempts) "
                "VALUES (?, ?, 'completed', '{}', ?, ?, ?, ?, ?, 1)",
                steps,
            )
            conn.executemany(
                "INSERT INTO saga_events (saga_id, at, event, step_name, phase, attempt, actor) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                events,
            )
        done += n
    conn.close()
    return time.perf_counter() - t0
