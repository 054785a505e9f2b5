"""Liveness: what the workers' heartbeats tell the store.

A heartbeat names a worker and the dispatches it holds. Recording it marks the worker seen
and each step it holds as heard of now (``heard_at``, ``held_by``). Nothing here changes a
saga's or a step's state: the sweeper reads ``heard_at`` to tell a step that runs long on a
live worker (heard of every heartbeat) from one whose worker died (heard of no more).
"""

from __future__ import annotations

from collections.abc import Sequence

from saga_core.database import Connection, pipeline, transaction
from saga_core.messages import Heartbeat, Phase
from saga_store.models import StepState

#: A worker not heard from for this long leaves the ``workers`` table.
FORGET_AFTER = 24 * 3600.0

#: The state a step is in while a dispatch of each phase is in flight.
_IN_FLIGHT = {
    Phase.ACTION: StepState.RUNNING.value,
    Phase.COMPENSATION: StepState.COMPENSATING.value,
}


def holder(beat: Heartbeat) -> str:
    """How a step's holder is named: the worker's name and its process."""
    return f"{beat.worker} pid {beat.pid}"


def record_heartbeats(conn: Connection, beats: Sequence[Heartbeat], now: float) -> int:
    """Record ``beats``, received at ``now``, in one transaction; returns how many steps in
    flight they were news of. A held dispatch of a step no longer in flight in that phase
    (its outcome came first, or a stale heartbeat) changes nothing. Any dispatch of the
    phase counts, not only the latest: the runs of all share one key, and the first to
    finish answers for the step."""
    # In (saga, step) order, the order transitions write steps in (saga_store.unit), which
    # the update follows where it walks the list (a few rows: the planner's choice); a
    # deadlock all the same is a passing failure, and the next beat says it again.
    held = sorted(
        (h.saga_id, h.step, _IN_FLIGHT[h.phase], holder(beat)) for beat in beats for h in beat.held
    )
    workers = sorted(
        {
            (beat.worker, beat.pid): (
                beat.worker,
                beat.pid,
                ",".join(beat.services),
                beat.interval,
                len(beat.held),
                now,
                now,
            )
            for beat in beats
        }.values()
    )
    # One round trip on PostgreSQL: each statement's answer is read at the end.
    with pipeline(conn), transaction(conn):
        conn.executemany(
            "INSERT INTO workers (name, pid, services, interval, held, first_seen, "
            "last_seen) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, pid) DO UPDATE "
            "SET services = excluded.services, interval = excluded.interval, "
            "held = excluded.held, last_seen = excluded.last_seen",
            workers,
        )
        # every step the beats hold, in one statement (VALUES names its columns column1...
        # on SQLite and PostgreSQL alike)
        moved = None
        if held:
            moved = conn.execute(
                "UPDATE saga_steps SET heard_at = ?, held_by = h.column4 FROM (VALUES "
                + ", ".join(["(?, ?, ?, ?)"] * len(held))
                + ") AS h WHERE saga_steps.saga_id = h.column1 AND saga_steps.step_name = "
                "h.column2 AND saga_steps.state = h.column3 AND saga_steps.deadline_at IS NOT NULL",
                (now, *(value for row in held for value in row)),
            )
        conn.execute("DELETE FROM workers WHERE last_seen < ?", (now - FORGET_AFTER,))
    return 0 if moved is None else max(moved.rowcount, 0)
