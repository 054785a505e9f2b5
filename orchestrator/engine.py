"""The engine: turns submissions, outcomes and passing time into transitions and commands.

It knows saga definitions, never a particular saga: what a saga does lives in its definition.
Every state change goes through :mod:`saga_store.transitions`; the engine publishes the
commands a transition asks for, after that transition has committed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from orchestrator.definition import SagaDefinition, by_stored_name
from orchestrator.liveness import QueueDepth, QueueWatch
from saga_core.config import Settings
from saga_core.database import Connection
from saga_core.errors import (
    BrokerUnavailable,
    DefinitionMissing,
    InvalidInput,
    SagaNotFound,
    TransitionRefused,
)
from saga_core.messages import Command, Heartbeat, Outcome, Phase, Status
from saga_core.middleware import Middleware
from saga_store import liveness, open_store, queries, transitions
from saga_store.models import Actor, Dispatch, SagaState, SagaView, StepSpec, iso, stored_name
from saga_store.transitions import Transition
from saga_store.unit import Unit

log = logging.getLogger("saga.orchestrator")
alert_log = logging.getLogger("saga.alert")

#: A service whose workers sent heartbeats within this long has its steps judged by
#: liveness; one with none (workers that send none, or none for an hour) by deadlines.
WATCHED_FOR = 3600.0

#: Seconds between two warnings that a service's steps wait with no live worker.
UNSERVED_WARNING_EVERY = 60.0


class Submitted(NamedTuple):
    """What :meth:`Engine.submit` did: the saga's id, whether this call stored it (not an
    earlier one with the same key), and whether its first command reached the broker."""

    saga_id: str
    created: bool
    sent: bool


class Publisher(Protocol):
    """Sends commands, all of them or (raising) not all: a command lost on the way is
    found lost by the sweeper and sent again. A publisher for clients raises
    ``BrokerUnavailable`` where the broker is down. ``sent`` runs once the commands are
    out: at once, or, where they go out with the orchestrator's next call to the broker
    (``orchestrator.inbox.Outbox``), after that call."""

    def __call__(self, commands: Sequence[Command], sent: Callable[[], None]) -> None: ...


class Engine:
    def __init__(
        self,
        settings: Settings,
        definitions: Mapping[str, SagaDefinition],
        publish: Publisher,
        *,
        clock: Callable[[], float] = time.time,
        middleware: Sequence[Middleware] = (),
        queue_depth: QueueDepth | None = None,
        retired: Iterable[SagaDefinition] = (),
    ):
        """New sagas start on ``definitions`` (by saga name); a saga in flight runs on the
        version it started with, one of those or of ``retired`` (earlier versions kept until
        their sagas end). ``queue_depth`` tells how many messages wait on a service's queue;
        without it (a client's engine, which never sweeps, or a test) every queue counts as
        empty."""
        self.settings = settings
        self.definitions = dict(definitions)
        self._versions = by_stored_name(self.definitions, retired)
        self.queues = QueueWatch(queue_depth)
        self._warned: dict[str, float] = {}
        self._services = {s.queue for d in self._versions.values() for s in d.steps}
        self.publish = publish
        self.middleware = tuple(middleware)
        self.clock = clock
        self._local = threading.local()
        self.db  # noqa: B018 - open (and migrate) the store now, so a bad data dir fails early

    @property
    def db(self) -> Connection:
        """This thread's connection to the saga store."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = open_store(self.settings.store())
        return conn

    def close(self) -> None:
        """Close this thread's connection to the store (opened again on next use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    # --- entry points -----------------------------------------------------------------------

    def submit(
        self, definition: str, document: Any, request_key: tuple[str, str] | None = None
    ) -> Submitted:
        """Validate ``document``, store a new saga and dispatch its first step.

        A document whose idempotency key was seen before (or a ``request_key``, see
        ``transitions.create_saga``) returns the first saga with ``created`` false. Invalid
        input raises ``InvalidInput`` before anything is stored. A broker that does not
        take the first command costs nothing but time: the saga is stored and started, and
        the command goes out when the orchestrator finds the broker again (``sent`` false).
        """
        saga_input, key = self._prepare(definition, document)
        now = self.clock()
        # stored and started in one transaction: one commit, and never seen pending
        with transitions.batch(self.db, []) as unit:
            saga_id, created = transitions.create_saga(
                unit,
                uuid.uuid4().hex,
                self.definitions[definition].stored_as,
                saga_input,
                self._specs(definition),
                now,
                idempotency_key=key,
                request_key=request_key,
            )
            started = transitions.start_saga(unit, saga_id, now) if created else None
        if started is None:
            return Submitted(saga_id, created=False, sent=True)
        log.info("saga %s started for %s", saga_id, key, extra={"saga_id": saga_id})
        return Submitted(saga_id, created=True, sent=self._send_later_if_down([started]))

    def submit_many(
        self,
        definition: str,
        documents: Sequence[Any],
        invalid: Callable[[int, InvalidInput], None] | None = None,
    ) -> list[Submitted]:
        """Store and start a batch of submissions in one store transaction, then send their
        first commands together (the orchestrator's path; ``submit`` is a client's). An
        invalid document is left out, and told to ``invalid`` with its index (or logged);
        the others go on."""
        prepared = []
        for i, document in enumerate(documents):
            try:
                prepared.append(self._prepare(definition, document))
            except InvalidInput as exc:
                if invalid is None:
                    log.error("refused a submission: %s", exc)
                else:
                    invalid(i, exc)
        specs = self._specs(definition)
        stored_as = self.definitions[definition].stored_as
        submitted: list[Submitted] = []
        started: list[tuple[str, Transition]] = []
        with transitions.batch(self.db, []) as unit:
            unit.prefetch_keys(key for _, key in prepared)
            now = self.clock()
            for saga_input, key in prepared:
                saga_id, created = transitions.create_saga(
                    unit, uuid.uuid4().hex, stored_as, saga_input, specs, now, idempotency_key=key
                )
                submitted.append(Submitted(saga_id, created, sent=True))
                if created:
                    started.append((key, transitions.start_saga(unit, saga_id, now)))
        for key, result in started:
            log.info(
                "saga %s started for %s", result.saga_id, key, extra={"saga_id": result.saga_id}
            )
        self._send(result for _, result in started)
        return submitted

    def _prepare(self, definition: str, document: Any) -> tuple[Any, str]:
        """``document`` validated (``InvalidInput``): the saga's input, and the key the
        store knows it by (the definition's name and the document's own key)."""
        saga_input, key = self.definitions[definition].prepare(document)
        return saga_input, f"{definition}:{key}"

    def _specs(self, definition: str) -> list[StepSpec]:
        return self.definitions[definition].specs(
            self.settings.step_timeout, self.settings.max_dispatches
        )

    def handle_outcome(self, outcome: Outcome) -> bool:
        """Apply one step's outcome; returns False for a duplicate or late one, which
        changes nothing."""
        return self.handle_outcomes([outcome]) == 1

    def handle_outcomes(self, outcomes: Sequence[Outcome]) -> int:
        """Apply a batch of outcomes in one store transaction, then send the commands they
        lead to; returns how many changed something.

        The batch's sagas are read (and locked) together, each outcome's transition decides
        on them, and every change is written at the end, at once (``transitions.batch``):
        a refused transition (a duplicate, a late outcome) changes nothing while the others
        commit together. The commands go out after the commit, so a crash in between leaves
        steps that no worker takes, and the sweeper finds them lost.
        """
        results: list[Transition] = []
        applied: list[tuple[Outcome, Transition]] = []
        with transitions.batch(self.db, [o.saga_id for o in outcomes]) as unit:
            for outcome in outcomes:
                try:
                    result = self._apply(unit, outcome)
                except (TransitionRefused, SagaNotFound) as exc:
                    log.debug(
                        "ignoring an outcome for %s/%s: %s", outcome.saga_id, outcome.step, exc
                    )
                    transitions.ignore_outcome(
                        unit,
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

    def _apply(self, db: transitions.Store, o: Outcome) -> Transition:
        """The transition an outcome asks for; raises ``TransitionRefused`` (or
        ``SagaNotFound``) for a duplicate or late one, and ``DefinitionMissing`` for a saga
        whose version this engine lacks."""
        self._definition_of(db, o.saga_id)
        now = self.clock()
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
            self._log_step_failure(result.definition, o.saga_id, o.step, o.status, o.error)
            return result
        if o.status is Status.SUCCEEDED:
            return transitions.complete_compensation(db, o.saga_id, o.step, now, o.attempt, o.tries)
        return transitions.fail_compensation(
            db, o.saga_id, o.step, o.error, now, o.attempt, o.tries
        )

    def sweep(self) -> int:
        """Start every saga left pending by a submitter that died before dispatching, and
        send again (or give up) every step judged lost; returns how many.

        A step is lost when nothing has been heard of it for ``liveness_timeout`` (no
        worker's heartbeat lists it) and its queue was seen empty since (so its message
        waits in no queue), long enough ago for a worker that took it to have said so: its
        worker died with its message, or the message never arrived. So a step that a live
        worker holds is never sent again, however long it runs, and one that waits in its
        queue is not late. Where no worker of the step's service sends heartbeats, liveness
        is unknown and the step's deadline (``step_timeout`` from its dispatch) decides, with
        the same condition on its queue.
        """
        now = self.clock()
        results: list[Transition] = []
        quiet_for = self.settings.liveness_timeout  # another sweeper may start it first
        for saga_id in queries.stale_pending(self.db, iso(now - self.settings.step_timeout)):
            with contextlib.suppress(TransitionRefused):
                self._definition_of(self.db, saga_id)
                results.append(
                    transitions.resume_saga(self.db, saga_id, now, Actor.SWEEPER, quiet_for)
                )
                log.warning("starting saga %s, left pending by its submitter", saga_id)
        window = self.settings.liveness_timeout
        # A message that re-entered its queue (RabbitMQ requeues a dead worker's) does so
        # within a heartbeat of the last news of it; a worker that takes one reports it
        # within a heartbeat: the queue must be seen empty between those two.
        grace = 1.5 * max(self.settings.heartbeat_interval, self.settings.sweep_interval)
        self.queues.look(self._services, now)
        last_heard = queries.services_last_heard(self.db, now - WATCHED_FOR)
        waiting: Counter[str] = Counter()
        for row in queries.unheard_steps(self.db, now, now - window):
            saga_id, step = row["saga_id"], row["step_name"]
            try:
                service = self._running(row["definition"], saga_id).step(step).queue
            except DefinitionMissing:
                continue  # left to an orchestrator that has its version
            if not self.queues.seen_empty(service, (row["heard_at"] or 0.0) + grace, now - grace):
                waiting[service] += 1
                continue  # it may be waiting in its queue, which is no sign of trouble
            if service in last_heard:
                silent_for = window
                reason = (
                    f"{row['held_by']} stopped reporting it"
                    if row["held_by"]
                    else "no worker reported taking it, and its queue is empty"
                )
            elif row["deadline_at"] <= now:
                silent_for, reason = row["timeout"], "no outcome by its deadline"
            else:
                continue
            try:
                result = transitions.redispatch_lost(
                    self.db, saga_id, step, now, silent_for, reason
                )
            except TransitionRefused:
                continue  # its outcome, or news of it, came in meanwhile
            results.append(result)
            again = [d for d in result.dispatches if d.step == step and d.attempt > 1]
            if again:
                log.warning(
                    "%s of %s/%s lost (%s): sending it again (attempt %d)",
                    again[0].phase,
                    saga_id,
                    step,
                    reason,
                    again[0].attempt,
                    extra={"saga_id": saga_id},
                )
            else:
                log.warning(
                    "gave up %s/%s: lost (%s) once too often",
                    saga_id,
                    step,
                    reason,
                    extra={"saga_id": saga_id},
                )
        self._warn_unserved(waiting, last_heard, now)
        self._send(results)
        return len(results)

    def _warn_unserved(
        self, waiting: Mapping[str, int], last_heard: Mapping[str, float], now: float
    ) -> None:
        """Say so, once a minute, where steps wait for a service none of whose workers is
        alive: they are not lost, so nothing is sent again and nobody else would notice."""
        for service, count in waiting.items():
            heard = last_heard.get(service)
            if heard is None or now - heard < self.settings.liveness_timeout:
                continue  # heartbeats off (nothing known), or a worker is alive
            if now - self._warned.get(service, 0.0) < UNSERVED_WARNING_EVERY:
                continue
            self._warned[service] = now
            log.warning(
                "%d step(s) wait for %s, and none of its workers has been heard from for %.0fs",
                count,
                service,
                now - heard,
            )

    def handle_heartbeats(self, beats: Sequence[Heartbeat]) -> int:
        """Record workers' heartbeats (``saga_store.liveness``); returns how many steps in
        flight they were news of."""
        news = liveness.record_heartbeats(self.db, beats, self.clock())
        for m in self.middleware:
            for beat in beats:
                m.after_heartbeat(beat)
        return news

    def recover(self) -> int:
        """Resume every saga not in a terminal state whose step in flight nothing has been
        heard of for ``liveness_timeout``; returns how many.

        A step heard of lately is left alone: a worker holds it, or it was sent a moment
        ago (by this process before it restarted, or by another orchestrator, whose own
        recovery may be running at the same time): if that command was lost, the sweeper
        finds it so. That way orchestrators that share a store and start together send each
        command again once, not once each."""
        results: list[Transition] = []
        quiet_for = self.settings.liveness_timeout
        for saga_id in queries.active_saga_ids(self.db):
            with contextlib.suppress(TransitionRefused):
                self._definition_of(self.db, saga_id)
                results.append(
                    transitions.resume_saga(self.db, saga_id, self.clock(), quiet_for=quiet_for)
                )
        self._send(results)
        if results:
            log.info("recovery resumed %d saga(s)", len(results))
        return len(results)

    # --- operator actions (see saga_store.transitions for each one's contract) ---------------

    def retry(self, saga_id: str, actor: str) -> SagaState:
        """Run a failed saga's given-up compensations again."""
        self._definition_of(self.db, saga_id)
        result = transitions.retry_compensations(self.db, saga_id, self.clock(), actor)
        log.warning("saga %s: %s asked to retry its compensations", saga_id, actor)
        self._send_later_if_down([result])
        return result.saga_state

    def resolve(self, saga_id: str, note: str, actor: str) -> None:
        """Record that a person settled a failed saga by hand."""
        transitions.resolve_saga(self.db, saga_id, note, self.clock(), actor)
        log.warning("saga %s resolved by %s: %s", saga_id, actor, note)

    def cancel(self, saga_id: str, actor: str) -> SagaState:
        """Stop a saga going forward and compensate what took effect."""
        self._definition_of(self.db, saga_id)
        result = transitions.cancel_saga(self.db, saga_id, self.clock(), actor)
        log.warning("saga %s: cancelled by %s", saga_id, actor)
        self._send_later_if_down([result])
        return result.saga_state

    def get(self, saga_id: str) -> SagaView:
        return queries.get_saga(self.db, saga_id)

    # --- internals --------------------------------------------------------------------------

    def _definition_of(self, db: transitions.Store, saga_id: str) -> SagaDefinition:
        """The definition the saga runs on (``SagaNotFound``, ``DefinitionMissing``)."""
        if isinstance(db, Unit):
            return self._running(db.saga(saga_id).definition, saga_id)
        return self._running(queries.definition_of(db, saga_id), saga_id)

    def _running(self, stored: str, saga_id: str) -> SagaDefinition:
        """The definition of the version a saga was stored with (``stored``); where this
        engine lacks it, ``DefinitionMissing``, said at ERROR once a minute per version."""
        definition = self._versions.get(stored)
        if definition is not None:
            return definition
        name, version = stored_name(stored)
        current = self.definitions.get(name)
        message = (
            f"saga {name!r} at version {version} of its definition, which this app lacks "
            f"({f'it has {current.version}' if current else 'it has no such saga'}): "
            "register that definition as retired (App(retired=[...])) until its sagas end"
        )
        now = self.clock()
        if now - self._warned.get(stored, float("-inf")) >= UNSERVED_WARNING_EVERY:
            self._warned[stored] = now
            log.error("not advancing saga %s: %s", saga_id, message, extra={"saga_id": saga_id})
        raise DefinitionMissing(message, saga_id=saga_id)

    def _send_later_if_down(self, results: Sequence[Transition]) -> bool:
        """Send the commands of ``results``; returns False where the broker did not take
        them. Their transitions are committed, so nothing is lost: the orchestrator sends
        every in-flight command again when it reconnects, and finds any it missed lost."""
        try:
            self._send(results)
        except BrokerUnavailable as exc:
            log.warning(
                "broker unreachable (%s): stored, sent when the broker is back",
                exc,
                extra={"saga_id": results[0].saga_id} if results else {},
            )
            return False
        return True

    def _send(self, results: Iterable[Transition]) -> None:
        """Publish the commands of committed transitions, in one batch, and log what
        they decided."""
        commands: list[Command] = []
        for result in results:
            for step, error in result.alerts:
                self._alert(result.saga_id, step, error)
            commands.extend(self._command(result, d) for d in result.dispatches)
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

        def sent() -> None:
            for m in self.middleware:
                m.after_publish(commands)

        self.publish(commands, sent)

    def _command(self, result: Transition, d: Dispatch) -> Command:
        """The command that carries out ``d``, one of the dispatches of ``result``."""
        saga_input, outputs = result.input, result.outputs
        step = self._running(result.definition, d.saga_id).step(d.step)
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

    def _log_step_failure(
        self, definition: str, saga_id: str, step: str, status: Status, error: str
    ) -> None:
        """A business refusal is expected (info); retries running out is not (warning)."""
        extra = {"saga_id": saga_id, "step": step}
        if self._running(definition, saga_id).step(step).best_effort:
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
