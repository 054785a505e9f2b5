"""Which database layer for PostgreSQL: psycopg 3 directly, or SQLAlchemy Core over it.

The store's hot path is one step completing: read the saga and the step (locked), move the
step, record the outcome, start the next step, move the saga, record the dispatch. This runs
those six statements, as the SQLite store runs them, in a schema of its own (dropped after),
per transition and in batches (one transaction per batch of outcomes, as the orchestrator
applies them), through each layer, and the SQLite store itself for comparison.

    python -m bench.db_layer --url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from bench.store import transitions_per_second

STEPS = ("reserve_inventory", "charge_payment", "create_shipment", "send_confirmation")

SCHEMA = """
CREATE TABLE sagas (id TEXT PRIMARY KEY, state TEXT NOT NULL, input TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, error TEXT);
CREATE TABLE saga_steps (saga_id TEXT NOT NULL REFERENCES sagas (id), step_name TEXT NOT NULL,
    position INTEGER NOT NULL, state TEXT NOT NULL, output TEXT, error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, timeout DOUBLE PRECISION NOT NULL,
    deadline_at DOUBLE PRECISION, heard_at DOUBLE PRECISION, held_by TEXT,
    PRIMARY KEY (saga_id, step_name));
CREATE TABLE saga_events (id BIGSERIAL PRIMARY KEY, saga_id TEXT NOT NULL, at DOUBLE PRECISION,
    event TEXT NOT NULL, step_name TEXT, phase TEXT, attempt INTEGER, actor TEXT);
CREATE INDEX saga_events_saga ON saga_events (saga_id, id);
"""

# The statements of one completion, as saga_store.transitions writes them (with %s).
READ = (
    "SELECT sagas.state AS saga_state, saga_steps.* FROM sagas JOIN saga_steps "
    "ON saga_steps.saga_id = sagas.id AND saga_steps.step_name = %s WHERE sagas.id = %s "
    "FOR UPDATE"
)
MOVE_STEP = (
    "UPDATE saga_steps SET state = %s, output = COALESCE(%s, output), deadline_at = NULL, "
    "held_by = NULL WHERE saga_id = %s AND step_name = %s"
)
RECORD = (
    "INSERT INTO saga_events (saga_id, at, event, step_name, phase, attempt, actor) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
ADVANCE = (
    "UPDATE saga_steps SET state = 'running', attempts = attempts + 1, "
    "deadline_at = %s + timeout, heard_at = %s WHERE saga_id = %s AND position = ("
    " SELECT MIN(position) FROM saga_steps WHERE saga_id = %s AND state = 'pending') "
    "RETURNING step_name, attempts"
)
MOVE_SAGA = "UPDATE sagas SET state = %s, updated_at = %s WHERE id = %s"

Execute = Callable[[str, Sequence[Any]], Any]


def complete(execute: Execute, saga_id: str, step: str, now: float) -> None:
    """One step completing, the next one dispatched: six statements."""
    row = execute(READ, (step, saga_id)).fetchone()
    assert row is not None and row[0] == "running", row
    execute(MOVE_STEP, ("completed", json.dumps({"ok": True}), saga_id, step))
    execute(RECORD, (saga_id, now, "succeeded", step, "action", 1, "orchestrator"))
    started = execute(ADVANCE, (now, now, saga_id, saga_id)).fetchone()
    state = "running" if started is not None else "completed"
    execute(MOVE_SAGA, (state, str(now), saga_id))
    execute(RECORD, (saga_id, now, "dispatched", step, "action", 1, "orchestrator"))


def seed(execute: Execute, sagas: int) -> list[str]:
    """``sagas`` running sagas, their first step running."""
    ids = [uuid.uuid4().hex for _ in range(sagas)]
    now = str(time.time())
    for sid in ids:
        execute(
            "INSERT INTO sagas (id, state, input, created_at, updated_at) "
            "VALUES (%s, 'running', '{}', %s, %s)",
            (sid, now, now),
        )
        for position, step in enumerate(STEPS):
            execute(
                "INSERT INTO saga_steps (saga_id, step_name, position, state, timeout) "
                "VALUES (%s, %s, %s, %s, 30)",
                (sid, step, position, "running" if position == 0 else "pending"),
            )
    return ids


def run(
    transaction: Callable[[], AbstractContextManager[Execute]], sagas: int, batch: int
) -> float:
    """Complete every step of ``sagas`` sagas, ``batch`` completions per transaction;
    returns transitions per second."""
    with transaction() as execute:
        ids = seed(execute, sagas)
    work = [(sid, step) for step in STEPS for sid in ids]
    t0 = time.perf_counter()
    for i in range(0, len(work), batch):
        with transaction() as execute:
            now = time.time()
            for sid, step in work[i : i + batch]:
                complete(execute, sid, step, now)
    return len(work) / (time.perf_counter() - t0)


STEP_MOVE = (
    "UPDATE saga_steps SET state = %s, output = %s, deadline_at = %s, heard_at = %s, "
    "attempts = attempts + %s, held_by = NULL WHERE saga_id = %s AND step_name = %s"
)


def run_batched(url: str, schema: str, sagas: int, batch: int) -> float:
    """The same completions, a batch at a time with psycopg: one read of every step of the
    batch's sagas (locked), the moves decided in Python, then every write sent at once
    (``executemany`` pipelines them): a few round trips per batch, whatever its size."""
    import psycopg

    with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
        with conn.transaction():
            ids = seed(conn.execute, sagas)
        work = [(sid, step) for step in STEPS for sid in ids]
        t0 = time.perf_counter()
        for i in range(0, len(work), batch):
            chunk = work[i : i + batch]
            now = time.time()
            with conn.transaction(), conn.cursor() as cur:
                rows = cur.execute(
                    "SELECT sagas.id, sagas.state AS saga_state, step_name, position, "
                    "saga_steps.state FROM sagas JOIN saga_steps ON saga_steps.saga_id = sagas.id "
                    "WHERE sagas.id = ANY(%s) ORDER BY sagas.id, position FOR UPDATE",
                    ([sid for sid, _ in chunk],),
                ).fetchall()
                steps: dict[str, list[list[Any]]] = {}
                for sid, _saga_state, name, _position, state in rows:
                    steps.setdefault(sid, []).append([name, state])
                moves: list[tuple[Any, ...]] = []
                events: list[tuple[Any, ...]] = []
                sagas_moved: list[tuple[Any, ...]] = []
                for sid, step in chunk:
                    mine = steps[sid]
                    done = next(s for s in mine if s[0] == step)
                    assert done[1] == "running", done
                    done[1] = "completed"
                    moves.append(("completed", '{"ok": true}', None, None, 0, sid, step))
                    events.append((sid, now, "succeeded", step, "action", 1, "orchestrator"))
                    nxt = next((s for s in mine if s[1] == "pending"), None)
                    if nxt is not None:
                        nxt[1] = "running"
                        moves.append(("running", None, now + 30, now, 1, sid, nxt[0]))
                        events.append((sid, now, "dispatched", nxt[0], "action", 1, "orchestrator"))
                    sagas_moved.append(("running" if nxt else "completed", str(now), sid))
                cur.executemany(STEP_MOVE, moves)
                cur.executemany(RECORD, events)
                cur.executemany(MOVE_SAGA, sagas_moved)
        return len(work) / (time.perf_counter() - t0)


@contextmanager
def psycopg_layer(url: str, schema: str) -> Iterator[Callable[[], Any]]:
    import psycopg

    conn = psycopg.connect(url, autocommit=False, options=f"-c search_path={schema}")

    @contextmanager
    def transaction() -> Iterator[Execute]:
        with conn.transaction():
            yield conn.execute

    try:
        yield transaction
    finally:
        conn.close()


@contextmanager
def sqlalchemy_layer(url: str, schema: str) -> Iterator[Callable[[], Any]]:
    import sqlalchemy

    from saga_core import postgres

    engine = sqlalchemy.create_engine(
        postgres.sqlalchemy_url(url),
        connect_args={"options": f"-c search_path={schema}"},
    )
    conn = engine.connect()
    # SQLAlchemy's exec_driver_sql passes the driver's own %s parameters through: the
    # lightest use of Core, with its connection and transaction handling.

    @contextmanager
    def transaction() -> Iterator[Execute]:
        with conn.begin():
            yield lambda sql, params: conn.exec_driver_sql(sql, tuple(params))

    try:
        yield transaction
    finally:
        conn.close()
        engine.dispose()


@contextmanager
def scratch_schema(url: str) -> Iterator[str]:
    import psycopg

    schema = f"bench_layer_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            admin.execute(f"SET search_path = {schema}")
            admin.execute(SCHEMA)
            yield schema
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--sagas", type=int, default=500, help="sagas per run (4 transitions each)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each, in turn (best kept)")
    args = p.parse_args(argv)
    figures: dict[str, float] = {}

    def keep_best(key: str, rate: float) -> None:
        figures[key] = max(figures.get(key, 0.0), rate)

    layers = {"psycopg": psycopg_layer, "sqlalchemy_core": sqlalchemy_layer}
    for _ in range(args.rounds):  # in turn, so that a noisy moment does not favour one
        for name, layer in layers.items():
            for batch in (1, 200):
                with scratch_schema(args.url) as schema, layer(args.url, schema) as tx:
                    keep_best(f"{name}_batch_{batch}", run(tx, args.sagas, batch))
        for batch in (1, 200):
            with scratch_schema(args.url) as schema:
                keep_best(
                    f"psycopg_batched_{batch}", run_batched(args.url, schema, args.sagas, batch)
                )
        with tempfile.TemporaryDirectory() as tmp:
            keep_best("sqlite_store", transitions_per_second(Path(tmp) / "sagas.db", args.sagas))
    for key, rate in figures.items():
        print(f"{key:28s} {rate:8.0f} transitions/s")
    print(json.dumps({k: round(v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
