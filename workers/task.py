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
from typing import Any

from celery import Celery, Task

from saga.celery_app import OUTCOME_TASK
from saga.config import ORCHESTRATOR_QUEUE, Settings
from saga.errors import BusinessError, MalformedCommand, TransientError
from saga.retry import RetryPolicy
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
        return execute(task, settings, service, operation, key, payload, reply, retry, fault_plan)

    run.__name__ = operation
    return run


def execute(
    task: Task,
    settings: Settings,
    service: Service,
    operation: str,
    key: str,
    payload: dict[str, Any],
    reply: dict[str, Any] | None,
    retry: dict[str, Any] | None,
    fault_plan: dict[str, Any] | None,
) -> Any:
    problem = _malformed(key, payload, reply, retry, fault_plan)
    if problem:
        log.error("%s: refusing a malformed command: %s", operation, problem)
        return {"status": "refused", "error": problem}
    policy = RetryPolicy.from_dict(retry)
    plan = faults.FaultPlan.for_operation(fault_plan, operation)
    tries = task.request.retries
    context = {"key": key, "operation": operation, "try": tries + 1}
    db = service.database(settings.data_dir)
    runs = ledger.begin_delivery(db, key, operation)
    try:
        if runs > settings.max_deliveries:
            error = f"{operation}: the worker died in each of its last {runs - 1} runs"
            log.error("%s; giving it up", error, extra=context)
            return _reply(task, settings, reply, "exhausted", error=error)
        return _run(task, settings, service, operation, key, payload, reply, policy, plan, context)
    finally:
        ledger.end_delivery(db, key, operation)


def _run(
    task: Task,
    settings: Settings,
    service: Service,
    operation: str,
    key: str,
    payload: dict[str, Any],
    reply: dict[str, Any] | None,
    policy: RetryPolicy,
    plan: faults.FaultPlan,
    context: dict[str, Any],
) -> Any:
    tries = task.request.retries
    is_compensation = service.operations[operation].is_compensation

    def inject() -> None:
        """Failures that happen where the effect would: recorded by the ledger if business."""
        if plan.fail_business:
            raise BusinessError(f"{operation} refused (fault plan)")
        drawn = faults.draw(settings.failure_rates_for(operation))
        if drawn == "business" and not is_compensation:
            raise BusinessError(f"{operation} refused (random failure)")

    try:
        if tries < plan.fail_transient:
            raise TransientError(f"{operation} failed (fault plan, try {tries + 1})")
        if faults.draw(settings.failure_rates_for(operation)) == "transient":
            raise TransientError(f"{operation} failed (random transient failure)")
        if plan.delay_seconds:
            _signal_running(settings, operation, key)
            time.sleep(plan.delay_seconds)  # the injected slowness itself, not a wait
        if plan.crash_before_effect:
            log.warning("%s: crashing before the effect (fault plan)", operation)
            os.kill(os.getpid(), signal.SIGKILL)
        db = service.database(settings.data_dir)
        output, fresh = service.run(db, operation, key, payload, before_effect=inject)
    except MalformedCommand as exc:
        log.error("%s", exc.message, extra=context)
        return _reply(task, settings, reply, "rejected", error=exc.message)
    except BusinessError as exc:
        log.info("%s refused: %s", operation, exc.message, extra=context)
        return _reply(task, settings, reply, "rejected", error=exc.message)
    except (TransientError, sqlite3.OperationalError) as exc:
        return _retry_or_give_up(task, settings, reply, policy, exc, context)
    except Exception as exc:
        log.exception("%s failed unexpectedly", operation, extra=context)
        return _retry_or_give_up(task, settings, reply, policy, exc, context)

    if fresh and plan.crash_after_effect:
        log.warning("%s: crashing after the effect, before the reply (fault plan)", operation)
        os.kill(os.getpid(), signal.SIGKILL)
    return _reply(task, settings, reply, "succeeded", output=output)


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


def _signal_running(settings: Settings, operation: str, key: str) -> None:
    marker = settings.data_dir / "running" / f"{operation}.{key}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def _retry_or_give_up(
    task: Task,
    settings: Settings,
    reply: dict[str, Any] | None,
    policy: RetryPolicy,
    exc: Exception,
    context: dict[str, Any],
) -> Any:
    tries = task.request.retries
    if tries < policy.max_retries:
        countdown = policy.delay(tries)
        log.debug("%s: retry %d in %.2fs: %s", context["operation"], tries + 1, countdown, exc)
        raise task.retry(countdown=countdown, max_retries=policy.max_retries, exc=exc)
    log.warning("%s: giving up after %d tries: %s", context["operation"], tries + 1, exc)
    return _reply(task, settings, reply, "exhausted", error=f"{exc} (after {tries + 1} tries)")


def _reply(
    task: Task,
    settings: Settings,
    reply: dict[str, Any] | None,
    status: str,
    output: Any = None,
    error: str | None = None,
) -> Any:
    if reply is not None:
        outcome = {**reply, "status": status, "output": output, "error": error}
        task.app.send_task(OUTCOME_TASK, args=[outcome], queue=settings.queue(ORCHESTRATOR_QUEUE))
    return {"status": status, "output": output, "error": error}
