"""The saga store alone: transitions per second, and filling it with finished sagas."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from bench.workload import order
from orchestrator.order_saga import ORDER_SAGA
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


def batched_transitions_per_second(
    where: Location | Path, sagas: int = 2000, batch: int = 200
) -> float:
    """As the orchestrator drives the store: ``sagas`` sagas created and started ``batch``
    submissions per transaction, then their steps completed ``batch`` outcomes per
    transaction (``transitions.batch``); counts every transition."""
    conn = open_store(where)
    try:
        ids = [uuid.uuid4().hex for _ in range(sagas)]
        work = [(sid, None) for sid in ids] + [(sid, s.name) for s in SPECS for sid in ids]
        t0 = time.perf_counter()
        for i in range(0, len(work), batch):
            chunk = work[i : i + batch]
            with transitions.batch(conn, [sid for sid, step in chunk if step]) as unit:
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
