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
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from orchestrator import crashpoints
from orchestrator.definition import SagaDefinition
from saga.config import Settings
from saga.errors import SagaNotFound, TransitionRefused
from saga_store import open_store, queries, transitions
from saga_store.models import Dispatch, Phase, SagaView
from saga_store.transitions import Transition

log = logging.getLogger("saga.orchestrator")
alert_log = logging.getLogger("saga.alert")

OUTCOME_STATUSES = ("succeeded", "rejected", "exhausted")


class Publisher(Protocol):
    def __call__(self, task: str, queue: str, kwargs: dict[str, Any]) -> None: ...


class Engine:
    def __init__(
        self,
        settings: Settings,
        definitions: Mapping[str, SagaDefinition],
        publish: Publisher,
        *,
        crash_points: bool = False,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
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

    def submit(self, definition: str, document: Any) -> tuple[str, bool]:
        """Validate ``document``, store a new saga and dispatch its first step.

        Returns ``(saga_id, created)``; a document whose idempotency key was seen before
        returns the first saga with ``created`` false. Invalid input raises ``InvalidOrder``
        before anything is stored.
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
        )
        if created:
            log.info(
                "saga %s started for %s %s", saga_id, definition, key, extra={"saga_id": saga_id}
            )
            with contextlib.suppress(TransitionRefused):  # recovery may have started it
                self._send(transitions.start_saga(self.db, saga_id, self.clock()))
        return saga_id, created

    def handle_outcome(self, outcome: Mapping[str, Any]) -> bool:
        """Apply a step's outcome; returns False for a duplicate, late or malformed one,
        which changes nothing."""
        try:
            saga_id, step = str(outcome["saga_id"]), str(outcome["step"])
            phase, status = Phase(outcome["phase"]), str(outcome["status"])
            if status not in OUTCOME_STATUSES:
                raise ValueError(status)
        except (KeyError, ValueError, TypeError):
            log.error("dropping a malformed outcome: %.300r", outcome)
            return False
        error = str(outcome.get("error") or "")
        now = self.clock()
        try:
            if phase is Phase.ACTION and status == "succeeded":
                result = transitions.complete_step(
                    self.db, saga_id, step, outcome.get("output"), now
                )
            elif phase is Phase.ACTION:
                result = transitions.fail_step(
                    self.db, saga_id, step, error, business=status == "rejected", now=now
                )
                self._log_step_failure(saga_id, step, status, error)
            elif status == "succeeded":
                result = transitions.complete_compensation(self.db, saga_id, step, now)
            else:
                result = transitions.fail_compensation(self.db, saga_id, step, error, now)
        except (TransitionRefused, SagaNotFound) as exc:
            transitions.count(self.db, "duplicate_outcomes")
            log.debug("ignoring outcome %s of %s/%s: %s", status, saga_id, step, exc)
            return False
        self._send(result, handling_outcome=True)
        return True

    def sweep(self) -> int:
        """Re-dispatch (or give up) every step whose deadline passed, and start every saga
        left pending by a submitter that died before dispatching; returns how many."""
        handled = 0
        stale = transitions.iso(self.clock() - self.settings.step_timeout)
        for saga_id in queries.stale_pending(self.db, stale):
            with contextlib.suppress(TransitionRefused):
                self._send(transitions.resume_saga(self.db, saga_id, self.clock()))
                log.warning("starting saga %s, left pending by its submitter", saga_id)
                handled += 1
        for saga_id, step in queries.overdue_steps(self.db, self.clock()):
            try:
                result = transitions.redispatch_overdue(self.db, saga_id, step, self.clock())
            except TransitionRefused:
                continue  # its outcome came in meanwhile
            handled += 1
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
            self._send(result)
        return handled

    def recover(self) -> int:
        """Resume every saga not in a terminal state; returns how many."""
        resumed = 0
        for saga_id in queries.active_saga_ids(self.db):
            try:
                result = transitions.resume_saga(self.db, saga_id, self.clock())
            except TransitionRefused:
                continue
            resumed += 1
            self._send(result)
        if resumed:
            log.info("recovery resumed %d saga(s)", resumed)
        return resumed

    def get(self, saga_id: str) -> SagaView:
        return queries.get_saga(self.db, saga_id)

    # --- internals --------------------------------------------------------------------------

    def _send(self, result: Transition, handling_outcome: bool = False) -> None:
        for step, error in result.alerts:
            self._alert(result.saga_id, step, error)
        for dispatch in result.dispatches:
            task, saga_input = self._publish(dispatch)
            if self.crash_points and handling_outcome:
                crashpoints.maybe_crash(
                    self.settings.data_dir, dispatch.saga_id, saga_input, "after_dispatch", task
                )
        if result.saga_state.terminal:
            log.info(
                "saga %s %s", result.saga_id, result.saga_state, extra={"saga_id": result.saga_id}
            )

    def _publish(self, d: Dispatch) -> tuple[str, dict[str, Any]]:
        """Send the command for ``d``; returns the task name and the saga's input."""
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
        self.publish(
            task,
            step.queue,
            {
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
            },
        )
        return task, view_input

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
