"""The engine: turns submissions, outcomes and passing time into transitions and commands.

It knows saga definitions, never a particular saga: what an order is lives in its definition.
Every state change goes through :mod:`saga_store.transitions`; the engine publishes the
commands a transition asks for, after that transition has committed.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator import crashpoints
from orchestrator.definition import SagaDefinition
from saga_core.config import Settings
from saga_core.errors import SagaNotFound, TransitionRefused
from saga_store import open_store, queries, transaction, transitions
from saga_store.models import Actor, Dispatch, Phase, SagaState, SagaView
from saga_store.transitions import Transition

log = logging.getLogger("saga.orchestrator")
alert_log = logging.getLogger("saga.alert")

OUTCOME_STATUSES = ("succeeded", "rejected", "exhausted")


@dataclass(frozen=True)
class Outcome:
    """A service's answer about one dispatch of a step, checked."""

    saga_id: str
    step: str
    phase: Phase
    status: str  # one of OUTCOME_STATUSES
    attempt: int | None  # the orchestrator's dispatch it answers
    tries: int | None  # the service's runs of that dispatch
    output: Any
    error: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Outcome | None:
        """The outcome in ``raw``, or None (logged) where it is malformed."""
        try:
            status = str(raw["status"])
            if status not in OUTCOME_STATUSES:
                raise ValueError(status)
            attempt, tries = raw.get("attempt"), raw.get("tries")
            for number in (attempt, tries):
                if number is not None and (type(number) is not int or number < 1):
                    raise ValueError(number)
            return cls(
                saga_id=str(raw["saga_id"]),
                step=str(raw["step"]),
                phase=Phase(raw["phase"]),
                status=status,
                attempt=attempt,
                tries=tries,
                output=raw.get("output"),
                error=str(raw.get("error") or ""),
            )
        except (KeyError, ValueError, TypeError):
            log.error("dropping a malformed outcome: %.300r", raw)
            return None


@dataclass(frozen=True)
class Command:
    """A step's action or compensation to send to its service's queue."""

    task: str
    queue: str
    kwargs: dict[str, Any]


class OutcomeObserver(Protocol):
    """Told of each outcome applied (the metrics)."""

    def outcome(
        self, step: str, phase: Phase, status: str, seconds: float | None, tries: int | None
    ) -> None: ...


class Publisher(Protocol):
    """Sends commands, all of them or (raising) not all: a command lost on the way is
    sent again when its step's deadline passes."""

    def __call__(self, commands: Sequence[Command]) -> None: ...


class Engine:
    def __init__(
        self,
        settings: Settings,
        definitions: Mapping[str, SagaDefinition],
        publish: Publisher,
        *,
        crash_points: bool = False,
        clock: Callable[[], float] = time.time,
        metrics: OutcomeObserver | None = None,
    ):
        self.settings = settings
        self.metrics = metrics
        self.definitions = dict(definitions)
        self.publish = publish
        self.crash_points = crash_points
        self.clock = clock
        self._local = threading.local()
        self.db  # noqa: B018 - open (and migrate) the store now, so a bad data dir fails early

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection to the saga store."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = open_store(self.settings.path("sagas.db"))
        return conn

    # --- entry points -----------------------------------------------------------------------

    def submit(
        self, definition: str, document: Any, request_key: tuple[str, str] | None = None
    ) -> tuple[str, bool]:
        """Validate ``document``, store a new saga and dispatch its first step.

        Returns ``(saga_id, created)``; a document whose idempotency key was seen before
        (or a ``request_key``, see ``transitions.create_saga``) returns the first saga with
        ``created`` false. Invalid input raises ``InvalidOrder`` before anything is stored.
        """
        saga_def = self.definitions[definition]
        saga_input, key = saga_def.prepare(document)
        saga_id, created = transitions.create_saga(
            self.db,
            uuid.uuid4().hex,
            definition,
            saga_input,
            saga_def.specs(self.settings.step_timeout, self.settings.max_dispatches),
            self.clock(),
            idempotency_key=f"{definition}:{key}",
            request_key=request_key,
        )
        if created:
            log.info(
                "saga %s started for %s %s", saga_id, definition, key, extra={"saga_id": saga_id}
            )
            with contextlib.suppress(TransitionRefused):  # recovery may have started it
                self._send([transitions.start_saga(self.db, saga_id, self.clock())])
        return saga_id, created

    def handle_outcome(self, outcome: Mapping[str, Any]) -> bool:
        """Apply one step's outcome; returns False for a duplicate, late or malformed one,
        which changes nothing."""
        return self.handle_outcomes([outcome]) == 1

    def handle_outcomes(self, outcomes: Sequence[Mapping[str, Any]]) -> int:
        """Apply a batch of outcomes in one store transaction, then send the commands they
        lead to; returns how many changed something.

        Each outcome's transition is a savepoint of its own, so a refused one (a duplicate,
        a late outcome) changes nothing while the others commit together: one commit per
        batch instead of one per outcome. The commands go out after the commit, so a crash
        in between leaves steps whose deadlines pass, and the sweeper sends them again.
        """
        results: list[Transition] = []
        applied: list[tuple[Outcome, Transition]] = []
        with transaction(self.db):
            for raw in outcomes:
                outcome = Outcome.parse(raw)
                if outcome is None:
                    continue
                try:
                    result = self._apply(outcome)
                except (TransitionRefused, SagaNotFound) as exc:
                    log.debug(
                        "ignoring an outcome for %s/%s: %s", outcome.saga_id, outcome.step, exc
                    )
                    transitions.ignore_outcome(
                        self.db,
                        outcome.saga_id,
                        outcome.step,
                        outcome.phase,
                        outcome.attempt,
                        exc.message,
                        self.clock(),
                    )
                    continue
                results.append(result)
                applied.append((outcome, result))
        if self.metrics is not None:
            for o, result in applied:
                self.metrics.outcome(o.step, o.phase, o.status, result.took, o.tries)
        self._send(results, handling_outcome=True)
        return len(results)

    def _apply(self, o: Outcome) -> Transition:
        """The transition an outcome asks for; raises ``TransitionRefused`` (or
        ``SagaNotFound``) for a duplicate or late one."""
        db, now = self.db, self.clock()
        if o.phase is Phase.ACTION and o.status == "succeeded":
            return transitions.complete_step(
                db, o.saga_id, o.step, o.output, now, o.attempt, o.tries
            )
        if o.phase is Phase.ACTION:
            result = transitions.fail_step(
                db,
                o.saga_id,
                o.step,
                o.error,
                business=o.status == "rejected",
                now=now,
                attempt=o.attempt,
                tries=o.tries,
            )
            self._log_step_failure(o.saga_id, o.step, o.status, o.error)
            return result
        if o.status == "succeeded":
            return transitions.complete_compensation(db, o.saga_id, o.step, now, o.attempt, o.tries)
        return transitions.fail_compensation(
            db, o.saga_id, o.step, o.error, now, o.attempt, o.tries
        )

    def sweep(self) -> int:
        """Re-dispatch (or give up) every step whose deadline passed, and start every saga
        left pending by a submitter that died before dispatching; returns how many."""
        results: list[Transition] = []
        stale = transitions.iso(self.clock() - self.settings.step_timeout)
        for saga_id in queries.stale_pending(self.db, stale):
            with contextlib.suppress(TransitionRefused):
                results.append(
                    transitions.resume_saga(self.db, saga_id, self.clock(), Actor.SWEEPER)
                )
                log.warning("starting saga %s, left pending by its submitter", saga_id)
        for saga_id, step in queries.overdue_steps(self.db, self.clock()):
            try:
                result = transitions.redispatch_overdue(self.db, saga_id, step, self.clock())
            except TransitionRefused:
                continue  # its outcome came in meanwhile
            results.append(result)
            again = [d for d in result.dispatches if d.step == step and d.attempt > 1]
            if again:
                log.warning(
                    "no outcome in time: re-dispatching %s of %s/%s (attempt %d)",
                    again[0].phase,
                    saga_id,
                    step,
                    again[0].attempt,
                    extra={"saga_id": saga_id},
                )
            else:
                log.warning(
                    "gave up %s/%s: no outcome within its dispatch budget",
                    saga_id,
                    step,
                    extra={"saga_id": saga_id},
                )
        self._send(results)
        return len(results)

    def recover(self) -> int:
        """Resume every saga not in a terminal state; returns how many."""
        results: list[Transition] = []
        for saga_id in queries.active_saga_ids(self.db):
            with contextlib.suppress(TransitionRefused):
                results.append(transitions.resume_saga(self.db, saga_id, self.clock()))
        self._send(results)
        if results:
            log.info("recovery resumed %d saga(s)", len(results))
        return len(results)

    # --- operator actions (see saga_store.transitions for each one's contract) ---------------

    def retry(self, saga_id: str, actor: str) -> SagaState:
        """Run a failed saga's given-up compensations again."""
        result = transitions.retry_compensations(self.db, saga_id, self.clock(), actor)
        log.warning("saga %s: %s asked to retry its compensations", saga_id, actor)
        self._send([result])
        return result.saga_state

    def resolve(self, saga_id: str, note: str, actor: str) -> None:
        """Record that a person settled a failed saga by hand."""
        transitions.resolve_saga(self.db, saga_id, note, self.clock(), actor)
        log.warning("saga %s resolved by %s: %s", saga_id, actor, note)

    def cancel(self, saga_id: str, actor: str) -> SagaState:
        """Stop a saga going forward and compensate what took effect."""
        result = transitions.cancel_saga(self.db, saga_id, self.clock(), actor)
        log.warning("saga %s: cancelled by %s", saga_id, actor)
        self._send([result])
        return result.saga_state

    def get(self, saga_id: str) -> SagaView:
        return queries.get_saga(self.db, saga_id)

    # --- internals --------------------------------------------------------------------------

    def _send(self, results: Iterable[Transition], handling_outcome: bool = False) -> None:
        """Publish the commands of committed transitions, in one batch, and log what
        they decided."""
        commands, sent = [], []
        for result in results:
            for step, error in result.alerts:
                self._alert(result.saga_id, step, error)
            for dispatch in result.dispatches:
                command, saga_input = self._command(dispatch)
                commands.append(command)
                sent.append((dispatch.saga_id, saga_input, command.task))
            if result.saga_state.terminal:
                log.info(
                    "saga %s %s",
                    result.saga_id,
                    result.saga_state,
                    extra={"saga_id": result.saga_id},
                )
        if commands:
            self.publish(commands)
        if self.crash_points and handling_outcome:
            for saga_id, saga_input, task in sent:
                crashpoints.maybe_crash(
                    self.settings.data_dir, saga_id, saga_input, "after_dispatch", task
                )

    def _command(self, d: Dispatch) -> tuple[Command, dict[str, Any]]:
        """The command for ``d``, and the saga's input."""
        definition, view_input, outputs = queries.step_outputs(self.db, d.saga_id)
        step = self.definitions[definition].step(d.step)
        if d.phase is Phase.ACTION:
            task, policy = step.action, step.retry
        else:
            assert step.compensation is not None
            task, policy = step.compensation, step.retry_for_compensation()
        if self.crash_points:
            crashpoints.maybe_crash(
                self.settings.data_dir, d.saga_id, view_input, "before_dispatch", task
            )
        kwargs = {
            "key": f"{d.saga_id}:{d.step}",
            "payload": step.payload(view_input, outputs),
            "reply": {
                "saga_id": d.saga_id,
                "step": d.step,
                "phase": d.phase.value,
                "attempt": d.attempt,
            },
            "retry": policy.to_dict(),
            "fault_plan": view_input.get("faults"),
        }
        return Command(task, step.queue, kwargs), view_input

    def _definition_of(self, saga_id: str) -> str:
        row = self.db.execute("SELECT definition FROM sagas WHERE id = ?", (saga_id,)).fetchone()
        if row is None:
            raise SagaNotFound(saga_id)
        return str(row["definition"])

    def _log_step_failure(self, saga_id: str, step: str, status: str, error: str) -> None:
        """A business refusal is expected (info); retries running out is not (warning)."""
        extra = {"saga_id": saga_id, "step": step}
        if self.definitions[self._definition_of(saga_id)].step(step).best_effort:
            log.warning(
                "best-effort step %s of saga %s failed: %s; the saga goes on",
                step,
                saga_id,
                error,
                extra=extra,
            )
            return
        level = logging.INFO if status == "rejected" else logging.WARNING
        log.log(
            level,
            "step %s of saga %s failed (%s): %s; compensating",
            step,
            saga_id,
            status,
            error,
            extra=extra,
        )

    def _alert(self, saga_id: str, step: str, error: str) -> None:
        alert_log.critical(
            "compensation of step %s failed for good in saga %s: %s",
            step,
            saga_id,
            error,
            extra={"saga_id": saga_id, "step": step},
        )
