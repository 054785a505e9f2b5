"""The step wrapper: turns a service's operations into Celery tasks.

This is the one place in ``workers/`` that knows a command may carry a reply address.
It runs the operation under its idempotency key, retries transient failures with
exponential backoff and jitter, and sends the outcome to the orchestrator's queue.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task

from saga_core.celery_app import OUTCOME_TASK, direct
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.errors import BusinessError, MalformedCommand, TransientError
from saga_core.retry import RetryPolicy
from workers import faults, ledger
from workers.service import Service

log = logging.getLogger("saga.worker")


def register(app: Celery, settings: Settings, service: Service) -> None:
    """Register every operation of ``service`` as a task routed to the service's queue."""
    queue = settings.queue(service.name)
    routes = dict(app.conf.task_routes or {})
    for op in service.operations.values():
        routes[op.name] = {"queue": queue}
        app.task(name=op.name, bind=True, acks_late=True, reject_on_worker_lost=True)(
            _make_task(settings, service, op.name)
        )
    app.conf.task_routes = routes


def _make_task(settings: Settings, service: Service, operation: str) -> Callable[..., Any]:
    def run(
        task: Task,
        key: str,
        payload: dict[str, Any],
        reply: dict[str, Any] | None = None,
        retry: dict[str, Any] | None = None,
        fault_plan: dict[str, Any] | None = None,
    ) -> Any:
        problem = _malformed(key, payload, reply, retry, fault_plan)
        if problem:
            log.error("%s: refusing a malformed command: %s", operation, problem)
            return {"status": "refused", "error": problem}
        delivery = Delivery(
            task,
            settings,
            service,
            operation,
            key,
            payload,
            reply,
            RetryPolicy.from_dict(retry),
            faults.FaultPlan.for_operation(fault_plan, operation),
        )
        return delivery.execute()

    run.__name__ = operation
    return run


@dataclass(frozen=True)
class Delivery:
    """One run of one command in this worker."""

    task: Task
    settings: Settings
    service: Service
    operation: str
    key: str
    payload: dict[str, Any]
    reply: dict[str, Any] | None
    policy: RetryPolicy
    plan: faults.FaultPlan

    @property
    def tries(self) -> int:
        return int(self.task.request.retries)

    @property
    def context(self) -> dict[str, Any]:
        """What a log line of this run carries (``SAGA_LOG_FORMAT=json`` shows it)."""
        context = {"key": self.key, "operation": self.operation, "try": self.tries + 1}
        if self.reply is not None:
            context.update(
                saga_id=self.reply["saga_id"],
                step=self.reply["step"],
                attempt=self.reply.get("attempt"),
            )
        return context

    def execute(self) -> Any:
        """Run the operation, unless its worker died in each of its last runs (a poison
        message, given up so that it cannot loop for ever).

        Only a redelivered message can follow a death, so only those are counted: a first
        delivery costs no bookkeeping write."""
        if not (self.task.request.delivery_info or {}).get("redelivered"):
            return self._run()
        db = self.service.database(self.settings.data_dir)
        runs = ledger.begin_delivery(db, self.key, self.operation)  # deaths so far
        try:
            if runs >= self.settings.max_deliveries:
                error = f"{self.operation}: the worker died in each of its last {runs} runs"
                log.error("%s; giving it up", error, extra=self.context)
                return self._reply("exhausted", error=error)
            return self._run()
        finally:
            ledger.end_delivery(db, self.key, self.operation)

    def _run(self) -> Any:
        op, plan, tries = self.operation, self.plan, self.tries
        rates = self.settings.failure_rates_for(op)
        is_compensation = self.service.operations[op].is_compensation

        def inject() -> None:
            """Failures where the effect would be: the ledger records a business one."""
            if plan.fail_business:
                raise BusinessError(f"{op} refused (fault plan)")
            if faults.draw(rates) == "business" and not is_compensation:
                raise BusinessError(f"{op} refused (random failure)")

        try:
            if tries < plan.fail_transient:
                raise TransientError(f"{op} failed (fault plan, try {tries + 1})")
            if faults.draw(rates) == "transient":
                raise TransientError(f"{op} failed (random transient failure)")
            if plan.delay_seconds:
                self._signal_running()
                time.sleep(plan.delay_seconds)  # the injected slowness itself, not a wait
            if plan.crash_before_effect:
                log.warning("%s: crashing before the effect (fault plan)", op, extra=self.context)
                os.kill(os.getpid(), signal.SIGKILL)
            db = self.service.database(self.settings.data_dir)
            output, fresh = self.service.run(db, op, self.key, self.payload, before_effect=inject)
        except MalformedCommand as exc:
            log.error("%s", exc.message, extra=self.context)
            return self._reply("rejected", error=exc.message)
        except BusinessError as exc:
            log.info("%s refused: %s", op, exc.message, extra=self.context)
            return self._reply("rejected", error=exc.message)
        except (TransientError, sqlite3.OperationalError) as exc:
            return self._retry_or_give_up(exc)
        except Exception as exc:
            log.exception("%s failed unexpectedly", op, extra=self.context)
            return self._retry_or_give_up(exc)

        if fresh and plan.crash_after_effect:
            log.warning(
                "%s: crashing after the effect, before the reply (fault plan)",
                op,
                extra=self.context,
            )
            os.kill(os.getpid(), signal.SIGKILL)
        return self._reply("succeeded", output=output)

    def _signal_running(self) -> None:
        marker = self.settings.data_dir / "running" / f"{self.operation}.{self.key}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def _retry_or_give_up(self, exc: Exception) -> Any:
        tries = self.tries
        if tries < self.policy.max_retries:
            countdown = self.policy.delay(tries)
            log.debug(
                "%s: retry %d in %.2fs: %s",
                self.operation,
                tries + 1,
                countdown,
                exc,
                extra=self.context,
            )
            raise self.task.retry(countdown=countdown, max_retries=self.policy.max_retries, exc=exc)
        log.warning(
            "%s: giving up after %d tries: %s", self.operation, tries + 1, exc, extra=self.context
        )
        return self._reply("exhausted", error=f"{exc} (after {tries + 1} tries)")

    def _reply(self, status: str, output: Any = None, error: str | None = None) -> Any:
        if self.reply is not None:
            outcome = {
                **self.reply,
                "status": status,
                "output": output,
                "error": error,
                "tries": self.tries + 1,
            }
            self.task.app.send_task(
                OUTCOME_TASK,
                args=[outcome],
                queue=direct(self.settings.queue(ORCHESTRATOR_QUEUE), self.settings.quorum_queues),
                argsrepr="",  # see orchestrator.process.celery_publisher
                kwargsrepr="",
            )
        return {"status": status, "output": output, "error": error}


def _malformed(key: Any, payload: Any, reply: Any, retry: Any, fault_plan: Any) -> str | None:
    """What is wrong with a command's shape, if anything (it may come from anywhere)."""
    if not isinstance(key, str) or not key or len(key) > 300:
        return "key must be a non-empty string"
    if not isinstance(payload, dict):
        return "payload must be an object"
    if reply is not None and not (
        isinstance(reply, dict)
        and isinstance(reply.get("saga_id"), str)
        and isinstance(reply.get("step"), str)
        and reply.get("phase") in ("action", "compensation")
    ):
        return "reply must be an object with saga_id, step and phase"
    if retry is not None:
        try:
            RetryPolicy.from_dict(retry).delay(0)
        except (TypeError, ValueError) as exc:
            return f"retry is not a retry policy: {exc}"
    if fault_plan is not None and not (
        isinstance(fault_plan, dict) and all(isinstance(v, dict) for v in fault_plan.values())
    ):
        return "fault_plan must map operations to objects"
    return None
