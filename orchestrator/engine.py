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
from typing import Any, Protocol

from orchestrator.definition import SagaDefinition
from saga_core.config import Settings
from saga_core.errors import SagaNotFound, TransitionRefused
from saga_core.messages import Command, Outcome, Phase, Status
from saga_core.middleware import Middleware
from saga_core.sqlite import transaction
from saga_store import open_store, queries, transitions
from saga_store.models import Actor, Dispatch, SagaState, SagaView, iso
from saga_store.transitions import Transition

log = logging.getLogger("saga.orchestrator")
alert_log = logging.getLogger("saga.alert")


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
        clock: Callable[[], float] = time.time,
        middleware: Sequence[Middleware] = (),
    ):
        self.settings = settings
        self.definitions = dict(definitions)
        self.publish = publish
        self.middleware = tuple(middleware)
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

    def handle_outcome(self, outcome: Outcome) -> bool:
        """Apply one step's outcome; returns False for a duplicate or late one, which
        changes nothing."""
        return self.handle_outcomes([outcome]) == 1

    def handle_outcomes(self, outcomes: Sequence[Outcome]) -> int:
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
            for outcome in outcomes:
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
        for m in self.middleware:
            for o, result in applied:
                m.after_outcome(o, result.took)
        self._send(results)
        return len(results)

    def _apply(self, o: Outcome) -> Transition:
        """The transition an outcome asks for; raises ``TransitionRefused`` (or
        ``SagaNotFound``) for a duplicate or late one."""
        db, now = self.db, self.clock()
        if o.phase is Phase.ACTION and o.status is Status.SUCCEEDED:
            return transitions.complete_step(
                db, o.saga_id, o.step, o.output, now, o.attempt, o.tries
            )
        if o.phase is Phase.ACTION:
            result = transitions.fail_step(
                db,
                o.saga_id,
                o.step,
                o.error,
                business=o.status is Status.REJECTED,
                now=now,
                attempt=o.attempt,
                tries=o.tries,
            )
            self._log_step_failure(o.saga_id, o.step, o.status, o.error)
            return result
        if o.status is Status.SUCCEEDED:
            return transitions.complete_compensation(db, o.saga_id, o.step, now, o.attempt, o.tries)
        return transitions.fail_compensation(
            db, o.saga_id, o.step, o.error, now, o.attempt, o.tries
        )

    def sweep(self) -> int:
        """Re-dispatch (or give up) every step whose deadline passed, and start every saga
        left pending by a submitter that died before dispatching; returns how many."""
        results: list[Transition] = []
        stale = iso(self.clock() - self.settings.step_timeout)
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

    def _send(self, results: Iterable[Transition]) -> None:
        """Publish the commands of committed transitions, in one batch, and log what
        they decided."""
        commands: list[Command] = []
        for result in results:
            for step, error in result.alerts:
                self._alert(result.saga_id, step, error)
            commands.extend(self._command(d) for d in result.dispatches)
            if result.saga_state.terminal:
                log.info(
                    "saga %s %s",
                    result.saga_id,
                    result.saga_state,
                    extra={"saga_id": result.saga_id},
                )
        if not commands:
            return
        for m in self.middleware:
            m.before_publish(commands)
        self.publish(commands)
        for m in self.middleware:
            m.after_publish(commands)

    def _command(self, d: Dispatch) -> Command:
        """The command that carries out ``d``."""
        definition, saga_input, outputs = queries.step_outputs(self.db, d.saga_id)
        step = self.definitions[definition].step(d.step)
        if d.phase is Phase.ACTION:
            operation, policy = step.action, step.retry
        else:
            assert step.compensation is not None
            operation, policy = step.compensation, step.retry_for_compensation()
        return Command(
            operation=operation,
            saga_id=d.saga_id,
            step=d.step,
            phase=d.phase,
            attempt=d.attempt,
            payload=step.payload(saga_input, outputs),
            retry=policy,
            queue=step.queue,
        )

    def _log_step_failure(self, saga_id: str, step: str, status: Status, error: str) -> None:
        """A business refusal is expected (info); retries running out is not (warning)."""
        extra = {"saga_id": saga_id, "step": step}
        if self.definitions[queries.definition_of(self.db, saga_id)].step(step).best_effort:
            log.warning(
                "best-effort step %s of saga %s failed: %s; the saga goes on",
                step,
                saga_id,
                error,
                extra=extra,
            )
            return
        level = logging.INFO if status is Status.REJECTED else logging.WARNING
        log.log(
            level,
            "step %s of saga %s failed (%s): %s; compensating",
            step,
            saga_id,
            status.value,
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
