"""The saga state machine: every state change, as one named transition.

Each public function here is one ``BEGIN IMMEDIATE`` transaction. It checks that the change
is allowed from the state it finds and raises :class:`TransitionRefused` (changing nothing)
when it is not; otherwise it writes the change and returns the commands that must now be
sent. Publishing them is the caller's job, after the commit: a crash in between leaves a
step whose deadline passes, and the sweeper sends the command again.

The store keeps what it needs of each step's definition (position, compensable, best-effort,
timeout, dispatch budget), so these functions never see a saga definition.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from saga.errors import SagaNotFound, TransitionRefused
from saga_store.db import transaction
from saga_store.models import Dispatch, Phase, SagaState, StepSpec


@dataclass
class Transition:
    """What a transition did: the saga's state after it, the commands to send, alerts raised."""

    saga_id: str
    saga_state: SagaState
    dispatches: list[Dispatch] = field(default_factory=list)
    alerts: list[tuple[str, str]] = field(default_factory=list)  # (step, error)


def iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")


# --- helpers: each runs inside the caller's transaction -------------------------------------


def _saga_state(conn: sqlite3.Connection, saga_id: str) -> SagaState:
    row = conn.execute("SELECT state FROM sagas WHERE id = ?", (saga_id,)).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    return SagaState(row["state"])


def _step(conn: sqlite3.Connection, saga_id: str, step: str) -> sqlite3.Row:
    row = conn.execute(
        "SELECT * FROM saga_steps WHERE saga_id = ? AND step_name = ?", (saga_id, step)
    ).fetchone()
    if row is None:
        raise TransitionRefused(f"saga has no step {step!r}", saga_id=saga_id, step=step)
    return row


def _saga_and_step(
    conn: sqlite3.Connection, saga_id: str, step: str
) -> tuple[SagaState, sqlite3.Row]:
    """The saga's state and the step's row, in one query."""
    row = conn.execute(
        "SELECT sagas.state AS saga_state, saga_steps.* FROM sagas LEFT JOIN saga_steps "
        "ON saga_steps.saga_id = sagas.id AND saga_steps.step_name = ? WHERE sagas.id = ?",
        (step, saga_id),
    ).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    if row["step_name"] is None:
        raise TransitionRefused(f"saga has no step {step!r}", saga_id=saga_id, step=step)
    return SagaState(row["saga_state"]), row


def _require(actual: str, allowed: set[str], what: str, saga_id: str, step: str | None = None):
    if actual not in allowed:
        raise TransitionRefused(
            f"{what} is not allowed from state '{actual}'", saga_id=saga_id, step=step
        )


def _set_saga(
    conn: sqlite3.Connection, saga_id: str, state: SagaState, now: float, error: str | None = None
) -> None:
    conn.execute(
        "UPDATE sagas SET state = ?, updated_at = ?, error = COALESCE(?, error) WHERE id = ?",
        (state.value, iso(now), error, saga_id),
    )


def _dispatch(
    conn: sqlite3.Connection, saga_id: str, step: sqlite3.Row, phase: Phase, now: float
) -> Dispatch:
    """Arm the step's deadline and count one more dispatch of ``phase``."""
    counter = "attempts" if phase is Phase.ACTION else "compensation_attempts"
    attempt = step[counter] + 1
    conn.execute(
        f"UPDATE saga_steps SET {counter} = ?, deadline_at = ? WHERE saga_id = ? AND step_name = ?",
        (attempt, now + step["timeout"], saga_id, step["step_name"]),
    )
    return Dispatch(saga_id, step["step_name"], phase, attempt)


def _advance(conn: sqlite3.Connection, saga_id: str, now: float) -> Transition:
    """Start the first pending step, or complete the saga when none is left.

    The step is found, started and dispatched in one statement: this is the hot path."""
    started = conn.execute(
        "UPDATE saga_steps SET state = 'running', attempts = attempts + 1, "
        "deadline_at = ? + timeout WHERE saga_id = ? AND position = ("
        " SELECT MIN(position) FROM saga_steps WHERE saga_id = ? AND state = 'pending') "
        "RETURNING step_name, attempts",
        (now, saga_id, saga_id),
    ).fetchone()
    if started is None:
        _set_saga(conn, saga_id, SagaState.COMPLETED, now)
        return Transition(saga_id, SagaState.COMPLETED)
    _set_saga(conn, saga_id, SagaState.RUNNING, now)
    dispatch = Dispatch(saga_id, started["step_name"], Phase.ACTION, started["attempts"])
    return Transition(saga_id, SagaState.RUNNING, [dispatch])


def _compensate_next(conn: sqlite3.Connection, saga_id: str, now: float) -> Transition:
    """Dispatch the last step still to be compensated, or end the saga when none is left.

    Compensations run one at a time in reverse order, so the step in flight is always the
    ``compensating`` step with the highest position.
    """
    nxt = conn.execute(
        "SELECT * FROM saga_steps WHERE saga_id = ? AND state = 'compensating' "
        "ORDER BY position DESC LIMIT 1",
        (saga_id,),
    ).fetchone()
    if nxt is not None:
        return Transition(
            saga_id,
            SagaState.COMPENSATING,
            [_dispatch(conn, saga_id, nxt, Phase.COMPENSATION, now)],
        )
    alerted = conn.execute(
        "SELECT 1 FROM alerts WHERE saga_id = ? AND resolved_at IS NULL LIMIT 1", (saga_id,)
    ).fetchone()
    final = SagaState.FAILED if alerted else SagaState.COMPENSATED
    _set_saga(conn, saga_id, final, now)
    return Transition(saga_id, final)


def _begin_compensation(
    conn: sqlite3.Connection, saga_id: str, now: float, error: str
) -> Transition:
    conn.execute(
        "UPDATE saga_steps SET state = 'compensating' "
        "WHERE saga_id = ? AND state = 'completed' AND compensable = 1",
        (saga_id,),
    )
    _set_saga(conn, saga_id, SagaState.COMPENSATING, now, error)
    return _compensate_next(conn, saga_id, now)


def _fail_action(
    conn: sqlite3.Connection,
    saga_id: str,
    step: sqlite3.Row,
    error: str,
    may_have_taken_effect: bool,
    now: float,
) -> Transition:
    name = step["step_name"]
    undo = may_have_taken_effect and step["compensable"] and not step["best_effort"]
    conn.execute(
        "UPDATE saga_steps SET state = ?, error = ?, deadline_at = NULL "
        "WHERE saga_id = ? AND step_name = ?",
        ("compensating" if undo else "failed", error, saga_id, name),
    )
    if step["best_effort"]:
        return _advance(conn, saga_id, now)
    return _begin_compensation(conn, saga_id, now, f"{name}: {error}")


def _raise_alert(conn: sqlite3.Connection, saga_id: str, step: str, error: str, now: float) -> None:
    conn.execute(
        "UPDATE saga_steps SET state = 'failed', error = ?, deadline_at = NULL "
        "WHERE saga_id = ? AND step_name = ?",
        (f"compensation failed: {error}", saga_id, step),
    )
    conn.execute(
        "INSERT INTO alerts (saga_id, step_name, error, created_at) VALUES (?, ?, ?, ?)",
        (saga_id, step, error, iso(now)),
    )


# --- the transitions ------------------------------------------------------------------------


def create_saga(
    conn: sqlite3.Connection,
    saga_id: str,
    definition: str,
    saga_input: Any,
    steps: Sequence[StepSpec],
    now: float,
    idempotency_key: str | None = None,
) -> tuple[str, bool]:
    """Store a new saga as ``pending`` with all its steps ``pending``.

    Where a saga with the same ``idempotency_key`` exists, nothing is written and that
    saga's id is returned. Returns ``(saga_id, created)``.
    """
    if not steps:
        raise ValueError("a saga needs at least one step")
    with transaction(conn):
        if idempotency_key is not None:
            row = conn.execute(
                "SELECT id FROM sagas WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            if row is not None:
                return row["id"], False
        conn.execute(
            "INSERT INTO sagas (id, state, input, created_at, updated_at, definition, "
            "idempotency_key) VALUES (?, 'pending', ?, ?, ?, ?, ?)",
            (saga_id, json.dumps(saga_input), iso(now), iso(now), definition, idempotency_key),
        )
        conn.executemany(
            "INSERT INTO saga_steps (saga_id, step_name, state, position, compensable, "
            "best_effort, timeout, max_dispatches) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
            [
                (
                    saga_id,
                    s.name,
                    i,
                    int(s.compensable),
                    int(s.best_effort),
                    s.timeout,
                    s.max_dispatches,
                )
                for i, s in enumerate(steps)
            ],
        )
    return saga_id, True


def start_saga(conn: sqlite3.Connection, saga_id: str, now: float) -> Transition:
    """``pending`` → ``running``: the first step goes ``running`` and is dispatched."""
    with transaction(conn):
        _require(_saga_state(conn, saga_id), {"pending"}, "starting the saga", saga_id)
        return _advance(conn, saga_id, now)


def complete_step(
    conn: sqlite3.Connection, saga_id: str, step: str, output: Any, now: float
) -> Transition:
    """A step's action succeeded: ``running`` → ``completed``, then the next step starts
    (or the saga completes). Refused for a step that is not running: a duplicate or late
    outcome."""
    with transaction(conn):
        state, row = _saga_and_step(conn, saga_id, step)
        _require(state, {"running"}, "completing a step", saga_id, step)
        _require(row["state"], {"running"}, "completing the step", saga_id, step)
        conn.execute(
            "UPDATE saga_steps SET state = 'completed', output = ?, error = NULL, "
            "deadline_at = NULL WHERE saga_id = ? AND step_name = ?",
            (json.dumps(output), saga_id, step),
        )
        return _advance(conn, saga_id, now)


def fail_step(
    conn: sqlite3.Connection, saga_id: str, step: str, error: str, *, business: bool, now: float
) -> Transition:
    """A step's action failed. A business failure took no effect: the step goes ``failed``.
    A failure after transient retries may have left a stray effect (another delivery may
    still be on its way), so a compensable step goes ``compensating`` to be undone too.
    A best-effort step's failure lets the saga go on; any other starts compensation of
    every step that took effect, last first. Refused for a step that is not running."""
    with transaction(conn):
        state, row = _saga_and_step(conn, saga_id, step)
        _require(state, {"running"}, "failing a step", saga_id, step)
        _require(row["state"], {"running"}, "failing the step", saga_id, step)
        return _fail_action(conn, saga_id, row, error, not business, now)


def complete_compensation(
    conn: sqlite3.Connection, saga_id: str, step: str, now: float
) -> Transition:
    """The step's compensation succeeded: ``compensating`` → ``compensated``; the next
    compensation is dispatched, or the saga ends (``compensated``, or ``failed`` where a
    compensation raised an alert). Refused unless this compensation is in flight."""
    with transaction(conn):
        state, row = _saga_and_step(conn, saga_id, step)
        _require(state, {"compensating"}, "completing a compensation", saga_id, step)
        in_flight = row["state"] == "compensating" and row["deadline_at"] is not None
        _require(
            "in flight" if in_flight else row["state"],
            {"in flight"},
            "completing the compensation",
            saga_id,
            step,
        )
        conn.execute(
            "UPDATE saga_steps SET state = 'compensated', deadline_at = NULL "
            "WHERE saga_id = ? AND step_name = ?",
            (saga_id, step),
        )
        return _compensate_next(conn, saga_id, now)


def fail_compensation(
    conn: sqlite3.Connection, saga_id: str, step: str, error: str, now: float
) -> Transition:
    """The step's compensation ran out of retries: the step goes ``failed``, an alert is
    stored, and the remaining compensations still run; the saga will end ``failed``.
    Refused unless this compensation is in flight."""
    with transaction(conn):
        state, row = _saga_and_step(conn, saga_id, step)
        _require(state, {"compensating"}, "failing a compensation", saga_id, step)
        in_flight = row["state"] == "compensating" and row["deadline_at"] is not None
        _require(
            "in flight" if in_flight else row["state"],
            {"in flight"},
            "failing the compensation",
            saga_id,
            step,
        )
        _raise_alert(conn, saga_id, step, error, now)
        result = _compensate_next(conn, saga_id, now)
        result.alerts.append((step, error))
        return result


def redispatch_overdue(conn: sqlite3.Connection, saga_id: str, step: str, now: float) -> Transition:
    """A step (or its compensation) whose deadline passed with no outcome: dispatch it
    again, or, once its dispatch budget is spent, give it up. A given-up action may have
    taken effect, so it is compensated; a given-up compensation raises an alert.
    Refused where the deadline has not passed or an outcome came in the meantime."""
    with transaction(conn):
        row = _step(conn, saga_id, step)
        deadline = row["deadline_at"]
        if deadline is None or deadline > now:
            raise TransitionRefused("the step is not overdue", saga_id=saga_id, step=step)
        conn.execute(
            "INSERT INTO counters (name, value) VALUES ('redispatches', 1) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1"
        )
        if row["state"] == "running":
            if row["attempts"] < row["max_dispatches"]:
                return Transition(
                    saga_id, SagaState.RUNNING, [_dispatch(conn, saga_id, row, Phase.ACTION, now)]
                )
            error = f"no outcome after {row['attempts']} dispatches"
            return _fail_action(conn, saga_id, row, error, True, now)
        if row["compensation_attempts"] < row["max_dispatches"]:
            return Transition(
                saga_id,
                SagaState.COMPENSATING,
                [_dispatch(conn, saga_id, row, Phase.COMPENSATION, now)],
            )
        error = f"no outcome after {row['compensation_attempts']} dispatches"
        _raise_alert(conn, saga_id, step, error, now)
        result = _compensate_next(conn, saga_id, now)
        result.alerts.append((step, error))
        return result


def resume_saga(conn: sqlite3.Connection, saga_id: str, now: float) -> Transition:
    """Recovery after an orchestrator restart: a ``pending`` saga starts; a running or
    compensating saga has its in-flight command sent again (its deadline re-armed, the
    dispatch not counted against its budget, since the orchestrator, not the step, failed).
    Refused for a terminal saga."""
    with transaction(conn):
        state = _saga_state(conn, saga_id)
        _require(state, {"pending", "running", "compensating"}, "resuming the saga", saga_id)
        if state is SagaState.PENDING:
            return _advance(conn, saga_id, now)
        phase, step_state = (
            (Phase.ACTION, "running")
            if state is SagaState.RUNNING
            else (Phase.COMPENSATION, "compensating")
        )
        row = conn.execute(
            "SELECT * FROM saga_steps WHERE saga_id = ? AND state = ? "
            "ORDER BY position DESC LIMIT 1",
            (saga_id, step_state),
        ).fetchone()
        if row is None:  # nothing in flight: only reachable through a hand-edited database
            return (
                _advance(conn, saga_id, now)
                if phase is Phase.ACTION
                else _compensate_next(conn, saga_id, now)
            )
        counter = "attempts" if phase is Phase.ACTION else "compensation_attempts"
        conn.execute(
            "UPDATE saga_steps SET deadline_at = ? WHERE saga_id = ? AND step_name = ?",
            (now + row["timeout"], saga_id, row["step_name"]),
        )
        return Transition(
            saga_id, state, [Dispatch(saga_id, row["step_name"], phase, row[counter])]
        )


def count(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    """Add ``by`` to a named counter (duplicate outcomes ignored, and the like)."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )
