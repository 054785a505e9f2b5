"""The saga state machine: every state change, as one named transition.

Each public function here is one transaction. It checks that the change is allowed from the
state it finds, by the table in :mod:`saga_store.machine`, and raises
:class:`TransitionRefused` (changing nothing) when it is not; otherwise it makes the change
and returns the commands that must now be sent. Publishing them is the caller's job, after
the commit: a crash in between leaves a step that no worker takes, and the sweeper sends
the command again.

A transition takes either a connection (it is then a transaction of its own) or a
:class:`~saga_store.unit.Unit` that a caller opened for a batch (it is then one attempt in
that unit: refused, it leaves the unit as it was; the unit commits them all at once). It
decides on the saga's record, read and locked by the unit, and never writes a statement
itself: the unit writes every change at its end (see :mod:`saga_store.unit`).

The store keeps what it needs of each step's definition (position, compensable, best-effort,
timeout, dispatch budget), so these functions never see a saga definition. Every change is
also appended to the saga's history (``saga_events``), with who asked for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from saga_core.database import Connection
from saga_core.errors import IdempotencyConflict, TransitionRefused
from saga_store.machine import SagaEvent, StepEvent, in_flight, saga_move, step_move
from saga_store.models import (
    PER_SAGA,
    Actor,
    Dispatch,
    Event,
    Phase,
    SagaState,
    StepSpec,
    StepState,
    iso,
    stored_name,
)
from saga_store.unit import SagaRecord, StepRecord, Unit, opened

#: Where a transition runs: a connection (its own transaction), or a batch's unit.
Store = Connection | Unit


@dataclass
class Transition:
    """What a transition did: the saga's state after it, the commands to send, alerts raised."""

    saga_id: str
    saga_state: SagaState
    dispatches: list[Dispatch] = field(default_factory=list)
    alerts: list[tuple[str, str]] = field(default_factory=list)  # (step, error)
    took: float | None = None  # for an outcome: seconds since the dispatch it answers
    # What the commands are built from: the saga's definition, input and step outputs.
    definition: str = ""
    input: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)


# --- running a transition ---------------------------------------------------------------


@contextmanager
def _unit(store: Store, skip_locked: bool = False) -> Iterator[Unit]:
    """The unit a transition works in: the caller's, or a transaction of its own."""
    if isinstance(store, Unit):
        yield store
        return
    with opened(store, skip_locked) as unit:
        yield unit


@contextmanager
def _on(store: Store, saga_id: str, skip_locked: bool = False) -> Iterator[tuple[Unit, SagaRecord]]:
    """The saga a transition changes, read and locked; a refusal changes nothing."""
    with _unit(store, skip_locked) as unit, unit.attempt(saga_id) as saga:
        yield unit, saga


@contextmanager
def batch(conn: Connection, saga_ids: Iterable[str]) -> Iterator[Unit]:
    """One transaction for many transitions (pass them the unit): ``saga_ids`` are read
    and locked up front, in one round trip; every change is written at the end, at once."""
    with _unit(conn) as unit:
        unit.load(saga_ids)
        yield unit


def _with_commands(saga: SagaRecord, result: Transition) -> Transition:
    """``result``, with what its commands are built from."""
    result.definition = saga.definition
    if result.dispatches:
        result.input = json.loads(saga.input)
        result.outputs = {s.step_name: json.loads(s.output) for s in saga.steps if s.output}
    return result


# --- helpers: each decides on records a unit holds ------------------------------------------


#: Events also counted in ``counters``, per saga name (``sagas_started/order``): what the
#: metrics read without scanning the sagas.
COUNTED = {
    Event.STARTED: "sagas_started",
    Event.COMPLETED: "sagas_completed",
    Event.COMPENSATED: "sagas_compensated",
    Event.FAILED: "sagas_failed",
}


def _since_dispatch(step: StepRecord, now: float) -> float | None:
    """Seconds since the step's dispatch (its deadline was armed then, ``timeout`` ahead)."""
    return None if step.deadline_at is None else now - (step.deadline_at - step.timeout)


def _record(
    unit: Unit,
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
        name = stored_name(unit.saga(saga_id).definition)[0]
        unit.count(f"{COUNTED[event]}{PER_SAGA}{name}")
    unit.record(
        (
            saga_id,
            now,
            event.value,
            step,
            None if phase is None else str(phase),
            attempt,
            tries,
            error,
            note,
            str(actor),
        )
    )


def _record_outcome(
    unit: Unit,
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
        unit,
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


def _step(saga: SagaRecord, name: str) -> StepRecord:
    step = saga.step(name)
    if step is None:
        raise TransitionRefused(f"saga has no step {name!r}", saga_id=saga.id, step=name)
    return step


def _move_saga(
    saga: SagaRecord, event: SagaEvent, now: float, error: str | None = None
) -> SagaState:
    """Move the saga by ``event`` (refused where the table has no such move), keeping
    ``error`` where one is given; returns its new state."""
    after = saga_move(SagaState(saga.state), event, event.value, saga.id)
    saga.state, saga.updated_at = after.value, iso(now)
    if error is not None:
        saga.error = error
    return after


def _move_step(
    saga: SagaRecord,
    step: StepRecord,
    event: StepEvent,
    error: str | None = None,
    output: str | None = None,
) -> None:
    """Move one step by ``event`` and disarm its deadline (nothing of it is in flight
    after any move but a dispatch, so no worker holds it), keeping ``error`` and ``output``
    where given."""
    after = step_move(StepState(step.state), event, saga_id=saga.id, step=step.step_name)
    step.state, step.deadline_at, step.held_by = after.value, None, None
    if error is not None:
        step.error = error
    if output is not None:
        step.output = output


def _dispatch(
    unit: Unit,
    saga: SagaRecord,
    step: StepRecord,
    phase: Phase,
    now: float,
    actor: str,
    event: Event = Event.DISPATCHED,
    note: str | None = None,
) -> Dispatch:
    """Arm the step's deadline, count one more dispatch of ``phase``, and hear of the
    step now (the dispatch is the last news of it until a worker reports holding it)."""
    if phase is Phase.ACTION:
        step.attempts = attempt = step.attempts + 1
    else:
        step.compensation_attempts = attempt = step.compensation_attempts + 1
    step.deadline_at, step.heard_at, step.held_by = now + step.timeout, now, None
    _record(
        unit,
        saga.id,
        now,
        event,
        actor,
        step=step.step_name,
        phase=phase,
        attempt=attempt,
        note=note,
    )
    return Dispatch(saga.id, step.step_name, phase, attempt)


def _advance(unit: Unit, saga: SagaRecord, now: float, actor: str) -> Transition:
    """Start the first pending step, or complete the saga when none is left."""
    nxt = next((s for s in saga.steps if s.state == StepState.PENDING), None)
    if nxt is None:
        final = _move_saga(saga, SagaEvent.FINISH, now)
        _record(unit, saga.id, now, Event.COMPLETED, actor)
        return Transition(saga.id, final)
    event = SagaEvent.START if saga.state == SagaState.PENDING else SagaEvent.NEXT_STEP
    _move_saga(saga, event, now)
    nxt.state = step_move(StepState.PENDING, StepEvent.DISPATCH).value
    dispatch = _dispatch(unit, saga, nxt, Phase.ACTION, now, actor)
    return Transition(saga.id, SagaState.RUNNING, [dispatch])


def _compensate_next(unit: Unit, saga: SagaRecord, now: float, actor: str) -> Transition:
    """Dispatch the last step still to be compensated, or end the saga when none is left.

    Compensations run one at a time in reverse order, so the step in flight is always the
    ``compensating`` step with the highest position.
    """
    nxt = _last_step_in(saga, StepState.COMPENSATING)
    if nxt is not None:
        return Transition(
            saga.id,
            SagaState.COMPENSATING,
            [_dispatch(unit, saga, nxt, Phase.COMPENSATION, now, actor)],
        )
    alerted = unit.has_open_alert(saga.id)
    final = _move_saga(saga, SagaEvent.UNDONE_WITH_ALERT if alerted else SagaEvent.UNDONE, now)
    _record(unit, saga.id, now, Event(final.value), actor)
    return Transition(saga.id, final)


def _last_step_in(saga: SagaRecord, state: StepState) -> StepRecord | None:
    """The saga's last step (by position) in ``state``: the one in flight, for a running
    or compensating saga, since both move one step at a time."""
    return next((s for s in reversed(saga.steps) if s.state == state), None)


def _begin_compensation(
    unit: Unit, saga: SagaRecord, now: float, error: str, actor: str
) -> Transition:
    """The saga turns back: every completed step that can be undone is queued for its
    compensation, and the last of them is sent."""
    queued = step_move(StepState.COMPLETED, StepEvent.UNDO).value
    for step in saga.steps:
        if step.state == StepState.COMPLETED and step.compensable:
            step.state = queued
    _move_saga(saga, SagaEvent.TURN_BACK, now, error)
    _record(unit, saga.id, now, Event.COMPENSATING, actor, error=error)
    return _compensate_next(unit, saga, now, actor)


def _fail_action(
    unit: Unit,
    saga: SagaRecord,
    step: StepRecord,
    error: str,
    may_have_taken_effect: bool,
    now: float,
    actor: str,
) -> Transition:
    undo = may_have_taken_effect and step.compensable and not step.best_effort
    _move_step(saga, step, StepEvent.UNDO if undo else StepEvent.FAIL, error)
    if step.best_effort:
        return _advance(unit, saga, now, actor)
    return _begin_compensation(unit, saga, now, f"{step.step_name}: {error}", actor)


def _raise_alert(
    unit: Unit, saga: SagaRecord, step: StepRecord, error: str, now: float, actor: str
) -> Transition:
    """The step's compensation gave up: an alert for a person, and the remaining
    compensations go on."""
    name = step.step_name
    _move_step(saga, step, StepEvent.GIVE_UP, f"compensation failed: {error}")
    unit.raise_alert(saga.id, name, error, iso(now))
    _record(unit, saga.id, now, Event.ALERT, actor, step=name, error=error)
    result = _compensate_next(unit, saga, now, actor)
    result.alerts.append((name, error))
    return result


# --- the transitions ------------------------------------------------------------------------


def create_saga(
    store: Store,
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
    saga's id is returned (one that another process stores at the same moment fails the
    transaction with ``TransientError``; tried again, it is found). A ``request_key`` (a
    client's key and its request's fingerprint) is bound to the saga in the same
    transaction: the same key again returns that saga, and with another fingerprint raises
    ``IdempotencyConflict``. Returns ``(saga_id, created)``.
    """
    if not steps:
        raise ValueError("a saga needs at least one step")
    with _unit(store) as unit:
        if request_key is not None:
            key, fingerprint = request_key
            bound = unit.conn.execute(
                "SELECT saga_id, fingerprint FROM request_keys WHERE key = ?", (key,)
            ).fetchone()
            if bound is not None:
                # an empty one was cleared by a migration (0006): it matches any request
                if bound["fingerprint"] and bound["fingerprint"] != fingerprint:
                    raise IdempotencyConflict(key, bound["saga_id"])
                return bound["saga_id"], False
        existing = None if idempotency_key is None else unit.saga_with_key(idempotency_key)
        if existing is not None:
            _bind_request(unit, request_key, existing, now)
            return existing, False
        saga = SagaRecord(
            saga_id, SagaState.PENDING.value, definition, json.dumps(saga_input), None, iso(now)
        )
        saga.steps = [StepRecord.pending(saga_id, i, spec) for i, spec in enumerate(steps)]
        unit.add(saga, iso(now), idempotency_key)
        _record(unit, saga_id, now, Event.CREATED, actor)
        _bind_request(unit, request_key, saga_id, now)
    return saga_id, True


def _bind_request(
    unit: Unit, request_key: tuple[str, str] | None, saga_id: str, now: float
) -> None:
    if request_key is not None:
        unit.requests.append((*request_key, saga_id, iso(now)))


def start_saga(store: Store, saga_id: str, now: float, actor: str = Actor.CLIENT) -> Transition:
    """``pending`` → ``running``: the first step goes ``running`` and is dispatched."""
    with _on(store, saga_id) as (unit, saga):
        saga_move(SagaState(saga.state), SagaEvent.START, "starting the saga", saga_id)
        _record(unit, saga_id, now, Event.STARTED, actor)
        return _with_commands(saga, _advance(unit, saga, now, actor))


def complete_step(
    store: Store,
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
    with _on(store, saga_id) as (unit, saga):
        row = _step(saga, step)
        saga_move(SagaState(saga.state), SagaEvent.NEXT_STEP, "completing a step", saga_id)
        took = _since_dispatch(row, now)
        _move_step(saga, row, StepEvent.SUCCEED, output=json.dumps(output))
        _record_outcome(unit, saga_id, now, Event.SUCCEEDED, step, Phase.ACTION, attempt, tries)
        result = _advance(unit, saga, now, Actor.ORCHESTRATOR)
        result.took = took
        return _with_commands(saga, result)


def fail_step(
    store: Store,
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
    with _on(store, saga_id) as (unit, saga):
        row = _step(saga, step)
        saga_move(SagaState(saga.state), SagaEvent.TURN_BACK, "failing a step", saga_id)
        step_move(StepState(row.state), StepEvent.FAIL, "failing the step", saga_id, step)
        took = _since_dispatch(row, now)
        _record_outcome(
            unit,
            saga_id,
            now,
            Event.REJECTED if business else Event.EXHAUSTED,
            step,
            Phase.ACTION,
            attempt,
            tries,
            error,
        )
        result = _fail_action(unit, saga, row, error, not business, now, Actor.ORCHESTRATOR)
        result.took = took
        return _with_commands(saga, result)


def _compensation_in_flight(saga: SagaRecord, step: str, what: str) -> StepRecord:
    """The step, where its compensation is in flight; else ``TransitionRefused``."""
    row = _step(saga, step)
    if saga.state != SagaState.COMPENSATING:
        raise TransitionRefused(
            f"{what} a compensation is not allowed from state '{saga.state}'", saga_id=saga.id
        )
    if not in_flight(row):
        raise TransitionRefused(
            f"{what} the compensation: none is in flight (step state '{row.state}')",
            saga_id=saga.id,
            step=step,
        )
    return row


def complete_compensation(
    store: Store,
    saga_id: str,
    step: str,
    now: float,
    attempt: int | None = None,
    tries: int | None = None,
) -> Transition:
    """The step's compensation succeeded: ``compensating`` → ``compensated``; the next
    compensation is dispatched, or the saga ends (``compensated``, or ``failed`` where a
    compensation raised an alert). Refused unless this compensation is in flight."""
    with _on(store, saga_id) as (unit, saga):
        row = _compensation_in_flight(saga, step, "completing")
        took = _since_dispatch(row, now)
        _move_step(saga, row, StepEvent.UNDONE)
        _record_outcome(
            unit, saga_id, now, Event.SUCCEEDED, step, Phase.COMPENSATION, attempt, tries
        )
        result = _compensate_next(unit, saga, now, Actor.ORCHESTRATOR)
        result.took = took
        return _with_commands(saga, result)


def fail_compensation(
    store: Store,
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
    with _on(store, saga_id) as (unit, saga):
        row = _compensation_in_flight(saga, step, "failing")
        took = _since_dispatch(row, now)
        _record_outcome(
            unit, saga_id, now, Event.EXHAUSTED, step, Phase.COMPENSATION, attempt, tries, error
        )
        result = _raise_alert(unit, saga, row, error, now, Actor.ORCHESTRATOR)
        result.took = took
        return _with_commands(saga, result)


def ignore_outcome(
    store: Store,
    saga_id: str,
    step: str,
    phase: Phase,
    attempt: int | None,
    reason: str,
    now: float,
) -> None:
    """An outcome that no transition accepts (a duplicate, a late one): counted, and kept
    in the saga's history where the saga exists. Changes no state."""
    with _unit(store) as unit:
        unit.count("duplicate_outcomes")
        if unit.exists(saga_id):
            _record(
                unit,
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
    store: Store,
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
    ``reason`` goes into the history. Refused where an outcome came in meanwhile, where
    the step was heard of since (another orchestrator's sweeper sent it again: that counts
    as news), or while another transaction holds the saga (it is not waited for: whatever
    it does is news of the step)."""
    with _on(store, saga_id, skip_locked=True) as (unit, saga):
        row = _step(saga, step)
        if row.deadline_at is None:
            raise TransitionRefused("the step is not in flight", saga_id=saga_id, step=step)
        if row.heard_at is not None and row.heard_at > now - silent_for:
            raise TransitionRefused("the step was heard of since", saga_id=saga_id, step=step)
        unit.count("redispatches")
        actor = Actor.SWEEPER
        phase = Phase.ACTION if row.state == StepState.RUNNING else Phase.COMPENSATION
        dispatched = row.attempts if phase is Phase.ACTION else row.compensation_attempts
        if dispatched < row.max_dispatches:
            again = _dispatch(unit, saga, row, phase, now, actor, Event.REDISPATCHED, reason)
            state = SagaState.RUNNING if phase is Phase.ACTION else SagaState.COMPENSATING
            return _with_commands(saga, Transition(saga_id, state, [again]))
        error = f"no outcome after {dispatched} dispatches ({reason or 'lost'})"
        _record(
            unit,
            saga_id,
            now,
            Event.GIVEN_UP,
            actor,
            step=step,
            phase=phase,
            attempt=dispatched,
            error=error,
        )
        if phase is Phase.ACTION:
            return _with_commands(saga, _fail_action(unit, saga, row, error, True, now, actor))
        return _with_commands(saga, _raise_alert(unit, saga, row, error, now, actor))


def resume_saga(
    store: Store,
    saga_id: str,
    now: float,
    actor: str = Actor.RECOVERY,
    quiet_for: float = 0.0,
) -> Transition:
    """Recovery after an orchestrator restart: a ``pending`` saga starts; a running or
    compensating saga has its in-flight command sent again (its deadline re-armed, the
    dispatch not counted against its budget, since the orchestrator, not the step, failed).
    Refused for a terminal saga; for a step in flight heard of within the last
    ``quiet_for`` seconds (a worker holds it, or it was just sent: by another orchestrator's
    recovery too, so orchestrators that start together send it once); and while another
    transaction holds the saga."""
    with _on(store, saga_id, skip_locked=True) as (unit, saga):
        state = SagaState(saga.state)
        if state.terminal:
            raise TransitionRefused(
                f"resuming the saga is not allowed from state '{state}'", saga_id=saga_id
            )
        if state is SagaState.PENDING:
            _record(unit, saga_id, now, Event.STARTED, actor)
            return _with_commands(saga, _advance(unit, saga, now, actor))
        phase, step_state = (
            (Phase.ACTION, StepState.RUNNING)
            if state is SagaState.RUNNING
            else (Phase.COMPENSATION, StepState.COMPENSATING)
        )
        row = _last_step_in(saga, step_state)
        if row is None:  # nothing in flight: only reachable through a hand-edited database
            result = (
                _advance(unit, saga, now, actor)
                if phase is Phase.ACTION
                else _compensate_next(unit, saga, now, actor)
            )
            return _with_commands(saga, result)
        if quiet_for and row.heard_at is not None and row.heard_at > now - quiet_for:
            raise TransitionRefused(
                "the step in flight was heard of lately", saga_id=saga_id, step=row.step_name
            )
        attempt = row.attempts if phase is Phase.ACTION else row.compensation_attempts
        row.deadline_at, row.heard_at, row.held_by = now + row.timeout, now, None
        _record(
            unit,
            saga_id,
            now,
            Event.RESENT,
            actor,
            step=row.step_name,
            phase=phase,
            attempt=attempt,
        )
        dispatch = Dispatch(saga_id, row.step_name, phase, attempt)
        return _with_commands(saga, Transition(saga_id, state, [dispatch]))


# --- operator actions -----------------------------------------------------------------------


def _open_alert_steps(unit: Unit, saga_id: str, what: str) -> list[str]:
    steps = unit.open_alert_steps(saga_id)
    if not steps:
        raise TransitionRefused(f"{what}: the saga has no open alert", saga_id=saga_id)
    return steps


def retry_compensations(store: Store, saga_id: str, now: float, actor: str) -> Transition:
    """``failed`` → ``compensating``, once a person has fixed what made compensations give
    up: each step with an open alert goes back to ``compensating`` with a fresh dispatch
    budget, the alerts close as retried, and the last of those steps is dispatched. The
    saga ends ``compensated`` if they now succeed (``failed`` again, with new alerts, if
    not). Refused unless the saga is ``failed`` with an open alert."""
    with _on(store, saga_id) as (unit, saga):
        what = "retrying its compensations"
        saga_move(SagaState(saga.state), SagaEvent.RETRY, what, saga_id)
        steps = _open_alert_steps(unit, saga_id, what)
        for step in saga.steps:
            if step.step_name in steps and step.state == StepState.FAILED:
                step.state = step_move(StepState.FAILED, StepEvent.RETRY).value
                step.compensation_attempts, step.error = 0, None
        unit.close_alerts(saga_id, iso(now), "retried")
        _move_saga(saga, SagaEvent.RETRY, now)
        _record(unit, saga_id, now, Event.RETRY, actor, note=", ".join(steps))
        return _with_commands(saga, _compensate_next(unit, saga, now, actor))


def resolve_saga(store: Store, saga_id: str, note: str, now: float, actor: str) -> None:
    """A person settled a failed saga by hand: its open alerts close with their ``note``
    and it leaves the alert list. The saga stays ``failed``: that is what the system
    did. Refused without a note, or unless the saga has an open alert."""
    if not note.strip():
        raise TransitionRefused("resolving a saga needs a note: what was done", saga_id=saga_id)
    with _on(store, saga_id) as (unit, _):
        _open_alert_steps(unit, saga_id, "resolving it")
        unit.close_alerts(saga_id, iso(now), note)
        _record(unit, saga_id, now, Event.RESOLVED, actor, note=note)


def cancel_saga(store: Store, saga_id: str, now: float, actor: str) -> Transition:
    """A saga still going forward stops. ``pending``: nothing took effect, it ends
    ``compensated``. ``running`` → ``compensating``: the step in flight may have taken
    effect, so it is compensated too (the service refuses its action if it comes late),
    after it every completed step, last first. Refused once the saga compensates or ended."""
    with _on(store, saga_id) as (unit, saga):
        state = SagaState(saga.state)
        if state is SagaState.PENDING:
            _record(unit, saga_id, now, Event.CANCELLED, actor)
            final = _move_saga(saga, SagaEvent.CANCEL_PENDING, now, "cancelled by an operator")
            _record(unit, saga_id, now, Event.COMPENSATED, actor)
            return Transition(saga_id, final)
        saga_move(state, SagaEvent.TURN_BACK, "cancelling the saga", saga_id)
        _record(unit, saga_id, now, Event.CANCELLED, actor)
        running = _last_step_in(saga, StepState.RUNNING)
        if running is not None:  # it may take effect yet: undone too, where it can be
            undo = running.compensable and not running.best_effort
            _move_step(saga, running, StepEvent.UNDO if undo else StepEvent.FAIL, "cancelled")
        result = _begin_compensation(unit, saga, now, "cancelled by an operator", actor)
        return _with_commands(saga, result)


def count(store: Store, name: str, by: int = 1) -> None:
    """Add ``by`` to a named counter."""
    with _unit(store) as unit:
        unit.count(name, by)
