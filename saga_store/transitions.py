"""The saga state machine: every state change, as one named transition.

Each public function here is one ``BEGIN IMMEDIATE`` transaction. It checks that the change
is allowed from the state it finds, by the table in :mod:`saga_store.machine`, and raises
:class:`TransitionRefused` (changing nothing) when it is not; otherwise it writes the change
and returns the commands that must now be sent. Publishing them is the caller's job, after
the commit: a crash in between leaves a step that no worker takes, and the sweeper sends
the command again.

The store keeps what it needs of each step's definition (position, compensable, best-effort,
timeout, dispatch budget), so these functions never see a saga definition. Every change is
also appended to the saga's history (``saga_events``) in the same transaction, with who
asked for it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from saga_core.errors import IdempotencyConflict, SagaNotFound, TransitionRefused
from saga_core.sqlite import transaction
from saga_store import queries
from saga_store.machine import SagaEvent, StepEvent, in_flight, saga_move, step_move
from saga_store.models import (
    Actor,
    Dispatch,
    Event,
    Phase,
    SagaState,
    StepSpec,
    StepState,
    iso,
)


@dataclass
class Transition:
    """What a transition did: the saga's state after it, the commands to send, alerts raised."""

    saga_id: str
    saga_state: SagaState
    dispatches: list[Dispatch] = field(default_factory=list)
    alerts: list[tuple[str, str]] = field(default_factory=list)  # (step, error)
    took: float | None = None  # for an outcome: seconds since the dispatch it answers


# --- helpers: each runs inside the caller's transaction -------------------------------------


#: Events also counted in ``counters``: what the metrics read without scanning the sagas.
COUNTED = {
    Event.STARTED: "sagas_started",
    Event.COMPLETED: "sagas_completed",
    Event.COMPENSATED: "sagas_compensated",
    Event.FAILED: "sagas_failed",
}


def _since_dispatch(step: sqlite3.Row, now: float) -> float | None:
    """Seconds since the step's dispatch (its deadline was armed then, ``timeout`` ahead)."""
    deadline = step["deadline_at"]
    return None if deadline is None else now - (deadline - step["timeout"])


def _record(
    conn: sqlite3.Connection,
    saga_id: str,
    now: float,
    event: Event,
    actor: str,
    *,
    step: str | None = None,
    phase: Phase | None = None,
    attempt: int | None = None,
    tries: int | None = None,
    error: str | None = None,
    note: str | None = None,
) -> None:
    """Append one event to the saga's history (and count sagas started and ended).
    ``attempt`` counts the orchestrator's dispatches of the step; ``tries``, the service's
    runs of that dispatch (its retries + 1)."""
    if event in COUNTED:
        _count(conn, COUNTED[event])
    conn.execute(
        "INSERT INTO saga_events "
        "(saga_id, at, event, step_name, phase, attempt, tries, error, note, actor) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (saga_id, now, event.value, step, phase, attempt, tries, error, note, actor),
    )


def _count(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )


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


def _record_outcome(
    conn: sqlite3.Connection,
    saga_id: str,
    now: float,
    event: Event,
    step: str,
    phase: Phase,
    attempt: int | None,
    tries: int | None,
    error: str | None = None,
) -> None:
    """Append a service's answer to the history (outcomes come to the orchestrator)."""
    _record(
        conn,
        saga_id,
        now,
        event,
        Actor.ORCHESTRATOR,
        step=step,
        phase=phase,
        attempt=attempt,
        tries=tries,
        error=error,
    )


def _move_saga(
    conn: sqlite3.Connection,
    saga_id: str,
    current: SagaState,
    event: SagaEvent,
    now: float,
    error: str | None = None,
) -> SagaState:
    """Move the saga by ``event`` (refused where the table has no such move), keeping
    ``error`` where one is given; returns its new state."""
    after = saga_move(current, event, event.value, saga_id)
    conn.execute(
        "UPDATE sagas SET state = ?, updated_at = ?, error = COALESCE(?, error) WHERE id = ?",
        (after.value, iso(now), error, saga_id),
    )
    return after


def _move_step(
    conn: sqlite3.Connection,
    saga_id: str,
    step: sqlite3.Row,
    event: StepEvent,
    error: str | None = None,
    output: str | None = None,
) -> None:
    """Move one step by ``event`` and disarm its deadline (nothing of it is in flight
    after any move but a dispatch, so no worker holds it), keeping ``error`` and ``output``
    where given."""
    after = step_move(StepState(step["state"]), event, saga_id=saga_id, step=step["step_name"])
    conn.execute(
        "UPDATE saga_steps SET state = ?, error = COALESCE(?, error), "
        "output = COALESCE(?, output), deadline_at = NULL, held_by = NULL "
        "WHERE saga_id = ? AND step_name = ?",
        (after.value, error, output, saga_id, step["step_name"]),
    )


def _dispatch(
    conn: sqlite3.Connection,
    saga_id: str,
    step: sqlite3.Row,
    phase: Phase,
    now: float,
    actor: str,
    event: Event = Event.DISPATCHED,
    note: str | None = None,
) -> Dispatch:
    """Arm the step's deadline, count one more dispatch of ``phase``, and hear of the
    step now (the dispatch is the last news of it until a worker reports holding it)."""
    counter = "attempts" if phase is Phase.ACTION else "compensation_attempts"
    attempt = step[counter] + 1
    conn.execute(
        f"UPDATE saga_steps SET {counter} = ?, deadline_at = ?, heard_at = ?, held_by = NULL "
        "WHERE saga_id = ? AND step_name = ?",
        (attempt, now + step["timeout"], now, saga_id, step["step_name"]),
    )
    _record(
        conn,
        saga_id,
        now,
        event,
        actor,
        step=step["step_name"],
        phase=phase,
        attempt=attempt,
        note=note,
    )
    return Dispatch(saga_id, step["step_name"], phase, attempt)


def _advance(
    conn: sqlite3.Connection, saga_id: str, current: SagaState, now: float, actor: str
) -> Transition:
    """Start the first pending step, or complete the saga when none is left.

    The step is found, started and dispatched in one statement: this is the hot path."""
    started = conn.execute(
        "UPDATE saga_steps SET state = ?, attempts = attempts + 1, "
        "deadline_at = ? + timeout, heard_at = ? WHERE saga_id = ? AND position = ("
        " SELECT MIN(position) FROM saga_steps WHERE saga_id = ? AND state = ?) "
        "RETURNING step_name, attempts",
        (_DISPATCHED, now, now, saga_id, saga_id, StepState.PENDING.value),
    ).fetchone()
    if started is None:
        final = _move_saga(conn, saga_id, current, SagaEvent.FINISH, now)
        _record(conn, saga_id, now, Event.COMPLETED, actor)
        return Transition(saga_id, final)
    event = SagaEvent.START if current is SagaState.PENDING else SagaEvent.NEXT_STEP
    _move_saga(conn, saga_id, current, event, now)
    dispatch = Dispatch(saga_id, started["step_name"], Phase.ACTION, started["attempts"])
    _record(
        conn,
        saga_id,
        now,
        Event.DISPATCHED,
        actor,
        step=dispatch.step,
        phase=Phase.ACTION,
        attempt=dispatch.attempt,
    )
    return Transition(saga_id, SagaState.RUNNING, [dispatch])


#: What a pending step becomes when it is sent (the hot path's one statement writes it).
_DISPATCHED = step_move(StepState.PENDING, StepEvent.DISPATCH).value


def _compensate_next(conn: sqlite3.Connection, saga_id: str, now: float, actor: str) -> Transition:
    """Dispatch the last step still to be compensated, or end the saga when none is left.

    Compensations run one at a time in reverse order, so the step in flight is always the
    ``compensating`` step with the highest position.
    """
    nxt = _last_step_in(conn, saga_id, StepState.COMPENSATING)
    if nxt is not None:
        return Transition(
            saga_id,
            SagaState.COMPENSATING,
            [_dispatch(conn, saga_id, nxt, Phase.COMPENSATION, now, actor)],
        )
    alerted = conn.execute(
        "SELECT 1 FROM alerts WHERE saga_id = ? AND resolved_at IS NULL LIMIT 1", (saga_id,)
    ).fetchone()
    event = SagaEvent.UNDONE_WITH_ALERT if alerted else SagaEvent.UNDONE
    final = _move_saga(conn, saga_id, SagaState.COMPENSATING, event, now)
    _record(conn, saga_id, now, Event(final.value), actor)
    return Transition(saga_id, final)


def _last_step_in(conn: sqlite3.Connection, saga_id: str, state: StepState) -> sqlite3.Row | None:
    """The saga's last step (by position) in ``state``: the one in flight, for a running
    or compensating saga, since both move one step at a time."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM saga_steps WHERE saga_id = ? AND state = ? ORDER BY position DESC LIMIT 1",
        (saga_id, state.value),
    ).fetchone()
    return row


def _begin_compensation(
    conn: sqlite3.Connection, saga_id: str, now: float, error: str, actor: str
) -> Transition:
    """The saga turns back: every completed step that can be undone is queued for its
    compensation, and the last of them is sent."""
    conn.execute(
        "UPDATE saga_steps SET state = ? WHERE saga_id = ? AND state = ? AND compensable = 1",
        (
            step_move(StepState.COMPLETED, StepEvent.UNDO).value,
            saga_id,
            StepState.COMPLETED.value,
        ),
    )
    _move_saga(conn, saga_id, SagaState.RUNNING, SagaEvent.TURN_BACK, now, error)
    _record(conn, saga_id, now, Event.COMPENSATING, actor, error=error)
    return _compensate_next(conn, saga_id, now, actor)


def _fail_action(
    conn: sqlite3.Connection,
    saga_id: str,
    step: sqlite3.Row,
    error: str,
    may_have_taken_effect: bool,
    now: float,
    actor: str,
) -> Transition:
    name = step["step_name"]
    undo = may_have_taken_effect and step["compensable"] and not step["best_effort"]
    _move_step(conn, saga_id, step, StepEvent.UNDO if undo else StepEvent.FAIL, error)
    if step["best_effort"]:
        return _advance(conn, saga_id, SagaState.RUNNING, now, actor)
    return _begin_compensation(conn, saga_id, now, f"{name}: {error}", actor)


def _raise_alert(
    conn: sqlite3.Connection, saga_id: str, step: sqlite3.Row, error: str, now: float, actor: str
) -> Transition:
    """The step's compensation gave up: an alert for a person, and the remaining
    compensations go on."""
    name = step["step_name"]
    _move_step(conn, saga_id, step, StepEvent.GIVE_UP, f"compensation failed: {error}")
    conn.execute(
        "INSERT INTO alerts (saga_id, step_name, error, created_at) VALUES (?, ?, ?, ?)",
        (saga_id, name, error, iso(now)),
    )
    _record(conn, saga_id, now, Event.ALERT, actor, step=name, error=error)
    result = _compensate_next(conn, saga_id, now, actor)
    result.alerts.append((name, error))
    return result


# --- the transitions ------------------------------------------------------------------------


def create_saga(
    conn: sqlite3.Connection,
    saga_id: str,
    definition: str,
    saga_input: Any,
    steps: Sequence[StepSpec],
    now: float,
    idempotency_key: str | None = None,
    actor: str = Actor.CLIENT,
    request_key: tuple[str, str] | None = None,
) -> tuple[str, bool]:
    """Store a new saga as ``pending`` with all its steps ``pending``.

    Where a saga with the same ``idempotency_key`` exists, nothing is written and that
    saga's id is returned. A ``request_key`` (a client's key and its request's fingerprint)
    is bound to the saga in the same transaction: the same key again returns that saga,
    and with another fingerprint raises ``IdempotencyConflict``. Returns
    ``(saga_id, created)``.
    """
    if not steps:
        raise ValueError("a saga needs at least one step")
    with transaction(conn):
        if request_key is not None:
            key, fingerprint = request_key
            bound = conn.execute(
                "SELECT saga_id, fingerprint FROM request_keys WHERE key = ?", (key,)
            ).fetchone()
            if bound is not None:
                if bound["fingerprint"] != fingerprint:
                    raise IdempotencyConflict(key, bound["saga_id"])
                return bound["saga_id"], False
        if idempotency_key is not None:
            row = conn.execute(
                "SELECT id FROM sagas WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            if row is not None:
                _bind_request(conn, request_key, row["id"], now)
                return row["id"], False
        conn.execute(
            "INSERT INTO sagas (id, state, input, created_at, updated_at, definition, "
            "idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                saga_id,
                SagaState.PENDING.value,
                json.dumps(saga_input),
                iso(now),
                iso(now),
                definition,
                idempotency_key,
            ),
        )
        conn.executemany(
            "INSERT INTO saga_steps (saga_id, step_name, state, position, compensable, "
            "best_effort, timeout, max_dispatches) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    saga_id,
                    s.name,
                    StepState.PENDING.value,
                    i,
                    int(s.compensable),
                    int(s.best_effort),
                    s.timeout,
                    s.max_dispatches,
                )
                for i, s in enumerate(steps)
            ],
        )
        _record(conn, saga_id, now, Event.CREATED, actor)
        _bind_request(conn, request_key, saga_id, now)
    return saga_id, True


def _bind_request(
    conn: sqlite3.Connection, request_key: tuple[str, str] | None, saga_id: str, now: float
) -> None:
    if request_key is not None:
        conn.execute(
            "INSERT INTO request_keys (key, fingerprint, saga_id, created_at) VALUES (?, ?, ?, ?)",
            (*request_key, saga_id, iso(now)),
        )


def start_saga(
    conn: sqlite3.Connection, saga_id: str, now: float, actor: str = Actor.CLIENT
) -> Transition:
    """``pending`` → ``running``: the first step goes ``running`` and is dispatched."""
    with transaction(conn):
        state = _saga_state(conn, saga_id)
        saga_move(state, SagaEvent.START, "starting the saga", saga_id)
        _record(conn, saga_id, now, Event.STARTED, actor)
        return _advance(conn, saga_id, state, now, actor)


def complete_step(
    conn: sqlite3.Connection,
    saga_id: str,
    step: str,
    output: Any,
    now: float,
    attempt: int | None = None,
    tries: int | None = None,
) -> Transition:
    """A step's action succeeded: ``running`` → ``completed``, then the next step starts
    (or the saga completes). Refused for a step that is not running: a duplicate or late
    outcome."""
    with transaction(conn):
        state, row = _saga_and_step(conn, saga_id, step)
        saga_move(state, SagaEvent.NEXT_STEP, "completing a step", saga_id)
        took = _since_dispatch(row, now)
        _move_step(conn, saga_id, row, StepEvent.SUCCEED, output=json.dumps(output))
        actor = Actor.ORCHESTRATOR
        _record_outcome(conn, saga_id, now, Event.SUCCEEDED, step, Phase.ACTION, attempt, tries)
        result = _advance(conn, saga_id, state, now, actor)
        result.took = took
        return result


def fail_step(
    conn: sqlite3.Connection,
    saga_id: str,
    step: str,
    error: str,
    *,
    business: bool,
    now: float,
    attempt: int | None = None,
    tries: int | None = None,
) -> Transition:
    """A step's action failed. A business failure took no effect: the step goes ``failed``.
    A failure after transient retries may have left a stray effect (another delivery may
    still be on its way), so a compensable step goes ``compensating`` to be undone too.
    A best-effort step's failure lets the saga go on; any other starts compensation of
    every step that took effect, last first. Refused for a step that is not running."""
    with transaction(conn):
        state, row = _saga_and_step(conn, saga_id, step)
        saga_move(state, SagaEvent.TURN_BACK, "failing a step", saga_id)
        step_move(StepState(row["state"]), StepEvent.FAIL, "failing the step", saga_id, step)
        actor = Actor.ORCHESTRATOR
        _record_outcome(
            conn,
            saga_id,
            now,
            Event.REJECTED if business else Event.EXHAUSTED,
            step,
            Phase.ACTION,
            attempt,
            tries,
            error,
        )
        result = _fail_action(conn, saga_id, row, error, not business, now, actor)
        result.took = _since_dispatch(row, now)
        return result


def _compensation_in_flight(
    conn: sqlite3.Connection, saga_id: str, step: str, what: str
) -> sqlite3.Row:
    """The step, where its compensation is in flight; else ``TransitionRefused``."""
    state, row = _saga_and_step(conn, saga_id, step)
    if state is not SagaState.COMPENSATING:
        raise TransitionRefused(
            f"{what} a compensation is not allowed from state '{state}'", saga_id=saga_id
        )
    if not in_flight(row):
        raise TransitionRefused(
            f"{what} the compensation: none is in flight (step state '{row['state']}')",
            saga_id=saga_id,
            step=step,
        )
    return row


def complete_compensation(
    conn: sqlite3.Connection,
    saga_id: str,
    step: str,
    now: float,
    attempt: int | None = None,
    tries: int | None = None,
) -> Transition:
    """The step's compensation succeeded: ``compensating`` → ``compensated``; the next
    compensation is dispatched, or the saga ends (``compensated``, or ``failed`` where a
    compensation raised an alert). Refused unless this compensation is in flight."""
    with transaction(conn):
        row = _compensation_in_flight(conn, saga_id, step, "completing")
        _move_step(conn, saga_id, row, StepEvent.UNDONE)
        actor = Actor.ORCHESTRATOR
        _record_outcome(
            conn, saga_id, now, Event.SUCCEEDED, step, Phase.COMPENSATION, attempt, tries
        )
        result = _compensate_next(conn, saga_id, now, actor)
        result.took = _since_dispatch(row, now)
        return result


def fail_compensation(
    conn: sqlite3.Connection,
    saga_id: str,
    step: str,
    error: str,
    now: float,
    attempt: int | None = None,
    tries: int | None = None,
) -> Transition:
    """The step's compensation ran out of retries: the step goes ``failed``, an alert is
    stored, and the remaining compensations still run; the saga will end ``failed``.
    Refused unless this compensation is in flight."""
    with transaction(conn):
        row = _compensation_in_flight(conn, saga_id, step, "failing")
        actor = Actor.ORCHESTRATOR
        _record_outcome(
            conn, saga_id, now, Event.EXHAUSTED, step, Phase.COMPENSATION, attempt, tries, error
        )
        result = _raise_alert(conn, saga_id, row, error, now, actor)
        result.took = _since_dispatch(row, now)
        return result


def ignore_outcome(
    conn: sqlite3.Connection,
    saga_id: str,
    step: str,
    phase: Phase,
    attempt: int | None,
    reason: str,
    now: float,
) -> None:
    """An outcome that no transition accepts (a duplicate, a late one): counted, and kept
    in the saga's history where the saga exists. Changes no state."""
    with transaction(conn):
        _count(conn, "duplicate_outcomes")
        if queries.saga_exists(conn, saga_id):
            _record(
                conn,
                saga_id,
                now,
                Event.DUPLICATE,
                Actor.ORCHESTRATOR,
                step=step,
                phase=phase,
                attempt=attempt,
                error=reason,
            )


def redispatch_lost(
    conn: sqlite3.Connection,
    saga_id: str,
    step: str,
    now: float,
    silent_for: float,
    reason: str = "",
) -> Transition:
    """A step (or its compensation) in flight that nothing has been heard of for
    ``silent_for`` seconds (no worker reports holding it; the sweeper has judged it lost):
    dispatch it again, or, once its dispatch budget is spent, give it up. A given-up action
    may have taken effect, so it is compensated; a given-up compensation raises an alert.
    ``reason`` goes into the history. Refused where an outcome came in meanwhile, or
    where the step was heard of since."""
    with transaction(conn):
        row = _step(conn, saga_id, step)
        if row["deadline_at"] is None:
            raise TransitionRefused("the step is not in flight", saga_id=saga_id, step=step)
        if row["heard_at"] is not None and row["heard_at"] > now - silent_for:
            raise TransitionRefused("the step was heard of since", saga_id=saga_id, step=step)
        _count(conn, "redispatches")
        actor = Actor.SWEEPER
        phase = Phase.ACTION if row["state"] == StepState.RUNNING else Phase.COMPENSATION
        counter = "attempts" if phase is Phase.ACTION else "compensation_attempts"
        if row[counter] < row["max_dispatches"]:
            return Transition(
                saga_id,
                SagaState.RUNNING if phase is Phase.ACTION else SagaState.COMPENSATING,
                [_dispatch(conn, saga_id, row, phase, now, actor, Event.REDISPATCHED, reason)],
            )
        error = f"no outcome after {row[counter]} dispatches ({reason or 'lost'})"
        _record(
            conn,
            saga_id,
            now,
            Event.GIVEN_UP,
            actor,
            step=step,
            phase=phase,
            attempt=row[counter],
            error=error,
        )
        if phase is Phase.ACTION:
            return _fail_action(conn, saga_id, row, error, True, now, actor)
        return _raise_alert(conn, saga_id, row, error, now, actor)


def resume_saga(
    conn: sqlite3.Connection, saga_id: str, now: float, actor: str = Actor.RECOVERY
) -> Transition:
    """Recovery after an orchestrator restart: a ``pending`` saga starts; a running or
    compensating saga has its in-flight command sent again (its deadline re-armed, the
    dispatch not counted against its budget, since the orchestrator, not the step, failed).
    Refused for a terminal saga."""
    with transaction(conn):
        state = _saga_state(conn, saga_id)
        if state.terminal:
            raise TransitionRefused(
                f"resuming the saga is not allowed from state '{state}'", saga_id=saga_id
            )
        if state is SagaState.PENDING:
            _record(conn, saga_id, now, Event.STARTED, actor)
            return _advance(conn, saga_id, state, now, actor)
        phase, step_state = (
            (Phase.ACTION, StepState.RUNNING)
            if state is SagaState.RUNNING
            else (Phase.COMPENSATION, StepState.COMPENSATING)
        )
        row = _last_step_in(conn, saga_id, step_state)
        if row is None:  # nothing in flight: only reachable through a hand-edited database
            return (
                _advance(conn, saga_id, state, now, actor)
                if phase is Phase.ACTION
                else _compensate_next(conn, saga_id, now, actor)
            )
        counter = "attempts" if phase is Phase.ACTION else "compensation_attempts"
        conn.execute(
            "UPDATE saga_steps SET deadline_at = ?, heard_at = ?, held_by = NULL "
            "WHERE saga_id = ? AND step_name = ?",
            (now + row["timeout"], now, saga_id, row["step_name"]),
        )
        _record(
            conn,
            saga_id,
            now,
            Event.RESENT,
            actor,
            step=row["step_name"],
            phase=phase,
            attempt=row[counter],
        )
        return Transition(
            saga_id, state, [Dispatch(saga_id, row["step_name"], phase, row[counter])]
        )


# --- operator actions -----------------------------------------------------------------------


def _open_alert_steps(conn: sqlite3.Connection, saga_id: str, what: str) -> list[str]:
    steps = [
        r["step_name"]
        for r in conn.execute(
            "SELECT step_name FROM alerts WHERE saga_id = ? AND resolved_at IS NULL ORDER BY id",
            (saga_id,),
        )
    ]
    if not steps:
        raise TransitionRefused(f"{what}: the saga has no open alert", saga_id=saga_id)
    return steps


def _close_alerts(conn: sqlite3.Connection, saga_id: str, resolution: str, now: float) -> None:
    conn.execute(
        "UPDATE alerts SET resolved_at = ?, resolution = ? "
        "WHERE saga_id = ? AND resolved_at IS NULL",
        (iso(now), resolution, saga_id),
    )


def retry_compensations(
    conn: sqlite3.Connection, saga_id: str, now: float, actor: str
) -> Transition:
    """``failed`` → ``compensating``, once a person has fixed what made compensations give
    up: each step with an open alert goes back to ``compensating`` with a fresh dispatch
    budget, the alerts close as retried, and the last of those steps is dispatched. The
    saga ends ``compensated`` if they now succeed (``failed`` again, with new alerts, if
    not). Refused unless the saga is ``failed`` with an open alert."""
    with transaction(conn):
        what = "retrying its compensations"
        state = _saga_state(conn, saga_id)
        saga_move(state, SagaEvent.RETRY, what, saga_id)
        steps = _open_alert_steps(conn, saga_id, what)
        conn.executemany(
            "UPDATE saga_steps SET state = ?, compensation_attempts = 0, "
            "error = NULL WHERE saga_id = ? AND step_name = ? AND state = ?",
            [
                (
                    step_move(StepState.FAILED, StepEvent.RETRY).value,
                    saga_id,
                    step,
                    StepState.FAILED.value,
                )
                for step in steps
            ],
        )
        _close_alerts(conn, saga_id, "retried", now)
        _move_saga(conn, saga_id, state, SagaEvent.RETRY, now)
        _record(conn, saga_id, now, Event.RETRY, actor, note=", ".join(steps))
        return _compensate_next(conn, saga_id, now, actor)


def resolve_saga(conn: sqlite3.Connection, saga_id: str, note: str, now: float, actor: str) -> None:
    """A person settled a failed saga by hand: its open alerts close with their ``note``
    and it leaves the alert list. The saga stays ``failed``: that is what the system
    did. Refused without a note, or unless the saga has an open alert."""
    if not note.strip():
        raise TransitionRefused("resolving a saga needs a note: what was done", saga_id=saga_id)
    with transaction(conn):
        _saga_state(conn, saga_id)
        _open_alert_steps(conn, saga_id, "resolving it")
        _close_alerts(conn, saga_id, note, now)
        _record(conn, saga_id, now, Event.RESOLVED, actor, note=note)


def cancel_saga(conn: sqlite3.Connection, saga_id: str, now: float, actor: str) -> Transition:
    """A saga still going forward stops. ``pending``: nothing took effect, it ends
    ``compensated``. ``running`` → ``compensating``: the step in flight may have taken
    effect, so it is compensated too (the service refuses its action if it comes late),
    after it every completed step, last first. Refused once the saga compensates or ended."""
    with transaction(conn):
        state = _saga_state(conn, saga_id)
        what = "cancelling the saga"
        if state is SagaState.PENDING:
            _record(conn, saga_id, now, Event.CANCELLED, actor)
            final = _move_saga(
                conn, saga_id, state, SagaEvent.CANCEL_PENDING, now, "cancelled by an operator"
            )
            _record(conn, saga_id, now, Event.COMPENSATED, actor)
            return Transition(saga_id, final)
        saga_move(state, SagaEvent.TURN_BACK, what, saga_id)
        _record(conn, saga_id, now, Event.CANCELLED, actor)
        running = _last_step_in(conn, saga_id, StepState.RUNNING)
        if running is not None:  # it may take effect yet: undone too, where it can be
            undo = running["compensable"] and not running["best_effort"]
            _move_step(
                conn, saga_id, running, StepEvent.UNDO if undo else StepEvent.FAIL, "cancelled"
            )
        return _begin_compensation(conn, saga_id, now, "cancelled by an operator", actor)


def count(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    """Add ``by`` to a named counter."""
    with transaction(conn):
        _count(conn, name, by)
