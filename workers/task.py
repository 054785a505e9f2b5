"""The step wrapper: a service's operations as Celery tasks that speak the command contract.

A run reads the command (``saga_core.messages``), gives up a message whose worker died in
each of its last runs, runs the operation under the command's idempotency key, retries a
transient failure with backoff, and answers with an outcome on the orchestrator's queue.
The operations themselves see only their payload: this is the one place in ``workers/``
that knows a command comes from a saga and gets an answer.

:class:`StepRunner` is that run without Celery: the Celery task is a thin shell around it,
and tests drive it directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task

from saga_core import dead_letters, signing
from saga_core.celery_app import direct, send
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.database import BUSY
from saga_core.dead_letters import DeadLetters
from saga_core.errors import (
    BusinessError,
    DatabaseUnavailable,
    MalformedCommand,
    MalformedMessage,
)
from saga_core.messages import (
    OUTCOME_KIND,
    OUTCOME_TASK,
    Command,
    Outcome,
    Phase,
    Status,
    command_kind,
)
from saga_core.middleware import Middleware
from saga_core.signing import Keyring
from workers import ledger
from workers.service import Service

log = logging.getLogger("saga.worker")


@dataclass(frozen=True)
class Retry:
    """Run the command again in ``countdown`` seconds: ``error`` was transient."""

    countdown: float
    error: Exception


#: Seconds a run waits for its service's database to answer again before it counts as a
#: failed try.
DATABASE_WAIT = 60.0


class StepRunner:
    """Runs commands for one service's operations, with the given middleware around them."""

    def __init__(self, settings: Settings, service: Service, middleware: Sequence[Middleware] = ()):
        self.settings, self.service = settings, service
        self._database = settings.service_database(service.name)
        self.middleware = tuple(middleware)

    def check(self, command: Command) -> None:
        """Refuse a command this service cannot run as it is phrased."""
        op = self.service.operations.get(command.operation)
        if op is None:
            raise MalformedMessage(f"command: {self.service.name} has no {command.operation!r}")
        if op.is_compensation != (command.phase is Phase.COMPENSATION):
            raise MalformedMessage(
                f"command: phase {command.phase.value!r} does not fit {command.operation!r}"
            )

    def run(
        self, command: Command, tries: int, redelivered: bool = False
    ) -> Outcome | Retry | None:
        """Run ``command`` after ``tries`` earlier runs of this delivery: the outcome to
        send, when to run it again, or None where another run of the same key is under way
        (a second dispatch that reached a worker while the first still runs): that run
        answers, and if it dies unanswered the orchestrator sends the step again.

        A redelivered message, or a step sent again (dispatch 2 and later: the orchestrator
        heard nothing of the last one, as when a worker dies running it and stops beating),
        may follow a worker that died running it, so its runs are counted in the ledger,
        and after ``max_deliveries`` deaths in a row it is given up (a poison message must
        not loop for ever). A first delivery costs no such write.
        """
        try:
            with self.service.leases(self._database).hold(command.key) as taken:
                if not taken:
                    raise ledger.UnderWay(command.key)
                if not redelivered and command.attempt == 1:
                    return self._run(command, tries, first=True)
                return self._run_counted(command, tries)
        except ledger.UnderWay:
            log.info(
                "%s: another run of %s is under way; leaving the step to it",
                command.operation,
                command.key,
                extra=context(command, tries),
            )
            return None

    def _run_counted(self, command: Command, tries: int) -> Outcome | Retry:
        db = self.service.database(self._database)
        deaths = ledger.begin_delivery(db, command.key, command.operation)
        try:
            if deaths >= self.settings.max_deliveries:
                error = f"{command.operation}: the worker died in each of its last {deaths} runs"
                log.error("%s; giving it up", error, extra=context(command, tries))
                return command.answer(Status.EXHAUSTED, tries + 1, error=error)
            return self._run(command, tries)
        finally:
            ledger.end_delivery(db, command.key, command.operation)

    def _run(self, command: Command, tries: int, first: bool = False) -> Outcome | Retry:
        """Run the command; while the service's database does not answer, wait for it
        (up to ``DATABASE_WAIT``) instead of spending the step's retries: the step is held,
        so its heartbeats keep it from being sent again, and a failover of a few seconds
        costs those seconds, not the saga."""
        deadline = time.monotonic() + DATABASE_WAIT
        while True:
            try:
                return self._run_once(command, tries, first)
            except DatabaseUnavailable as exc:
                if time.monotonic() > deadline:
                    return self._retry_or_give_up(command, tries, exc)
                log.warning(
                    "%s: %s; waiting for it", command.operation, exc, extra=context(command, tries)
                )
                time.sleep(1.0)  # the server's own pace: a restart or a failover

    def _run_once(self, command: Command, tries: int, first: bool) -> Outcome | Retry:
        op = command.operation
        try:
            for m in self.middleware:
                m.before_run(command, tries)
            output, fresh = self.service.run(
                self.service.database(self._database),
                op,
                command.key,
                command.payload,
                before_effect=self._before_effect(command),
                first=first,
            )
        except MalformedCommand as exc:
            log.error("%s", exc.message, extra=context(command, tries))
            return command.answer(Status.REJECTED, tries + 1, error=exc.message)
        except BusinessError as exc:
            log.info("%s refused: %s", op, exc.message, extra=context(command, tries))
            return command.answer(Status.REJECTED, tries + 1, error=exc.message)
        except (DatabaseUnavailable, ledger.UnderWay):
            raise
        except BUSY as exc:
            return self._retry_or_give_up(command, tries, exc)
        except Exception as exc:
            log.exception("%s failed unexpectedly", op, extra=context(command, tries))
            return self._retry_or_give_up(command, tries, exc)
        for m in self.middleware:
            m.after_effect(command, fresh)
        return command.answer(Status.SUCCEEDED, tries + 1, output)

    def _before_effect(self, command: Command) -> Callable[[], None] | None:
        if not self.middleware:
            return None

        def before_effect() -> None:
            for m in self.middleware:
                m.before_effect(command)

        return before_effect

    def _retry_or_give_up(self, command: Command, tries: int, exc: Exception) -> Outcome | Retry:
        if tries < command.retry.max_retries:
            countdown = command.retry.delay(tries)
            log.debug(
                "%s: retry %d in %.2fs: %s",
                command.operation,
                tries + 1,
                countdown,
                exc,
                extra=context(command, tries),
            )
            return Retry(countdown, exc)
        log.warning(
            "%s: giving up after %d tries: %s",
            command.operation,
            tries + 1,
            exc,
            extra=context(command, tries),
        )
        return command.answer(Status.EXHAUSTED, tries + 1, error=f"{exc} (after {tries + 1} tries)")


def context(command: Command, tries: int) -> dict[str, Any]:
    """What a log line of a run carries (``SAGA_LOG_FORMAT=json`` shows it)."""
    return {
        "key": command.key,
        "operation": command.operation,
        "try": tries + 1,
        "saga_id": command.saga_id,
        "step": command.step,
        "attempt": command.attempt,
    }


def register(
    app: Celery,
    settings: Settings,
    service: Service,
    keyring: Keyring,
    middleware: Sequence[Middleware] = (),
) -> None:
    """Register every operation of ``service`` as a task routed to the service's queue,
    running only commands signed with the service's key (where signing is on)."""
    queue = settings.queue(service.name)
    runner = StepRunner(settings, service, middleware)
    dead = dead_letters.for_system(settings)
    reply_to = direct(settings.queue(ORCHESTRATOR_QUEUE), settings.quorum_queues)
    routes = dict(app.conf.task_routes or {})
    for op in service.operations.values():
        routes[op.name] = {"queue": queue}
        # shared=False: this app's own, so that building a second app (tests, tools) does
        # not collide in Celery's shared registry
        app.task(name=op.name, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False)(
            _make_task(runner, keyring, op.name, reply_to, dead)
        )
    app.conf.task_routes = routes


def _make_task(
    runner: StepRunner, keyring: Keyring, operation: str, reply_to: Any, dead: DeadLetters
) -> Callable[..., Any]:
    service = runner.service.name
    kind = command_kind(operation)

    def refuse(task: Task, reason: str, why: str) -> None:
        queue = str((task.request.delivery_info or {}).get("routing_key") or service)
        dead.put(queue, f"{operation}: {why}", json.dumps([task.request.args, task.request.kwargs]))
        for m in runner.middleware:
            m.refused(kind, reason)

    def run(task: Task, *args: Any, **kwargs: Any) -> Any:
        # A refused message returns normally: acknowledged, so gone from the queue, and
        # never run. Celery records what it returned; Flower shows it.
        try:
            if kwargs or len(args) != 1:
                raise MalformedMessage("command: expected one argument, the command object")
            signing.require(keyring.check(kind, args[0]), service, kind)
            command = Command.from_wire(operation, args[0])
            runner.check(command)
        except signing.Refused as exc:
            refuse(task, exc.reason, exc.message)
            return {"refused": exc.reason}
        except MalformedMessage as exc:
            refuse(task, "malformed", exc.message)
            return {"refused": exc.message}
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        result = runner.run(command, int(task.request.retries), redelivered)
        if result is None:
            return {"left_to": "the run that holds the lease"}
        if isinstance(result, Retry):
            raise task.retry(
                countdown=result.countdown,
                max_retries=command.retry.max_retries,
                exc=result.error,
            )
        send(
            task.app,
            reply_to,
            OUTCOME_TASK,
            keyring.sign(OUTCOME_KIND, result.to_wire(), (service,)),
        )
        return result.status.value  # what Celery logs and Flower shows

    run.__name__ = operation
    return run
