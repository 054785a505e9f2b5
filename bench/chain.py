"""The bare Celery chain's worker: ``celery -A bench.chain worker -Q PREFIX.chain.SERVICE``.

Each task runs a service operation through the same step runner as a saga's step (the
ledger, the service's SQLite write), but sends no outcome: a chain moves on by Celery's
own link. Only a chain's last step replies, as a saga's step does, on a queue of the
bench's (``done_queue``), where it reads it to see the chain end.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from order_app import app as order_app
from saga_core import config
from saga_core.celery_app import direct, make_app, send
from saga_core.config import Settings
from saga_core.messages import OUTCOME_TASK, Command
from workers.task import Retry, StepRunner


def queue(settings: Settings, service: str) -> str:
    return settings.queue(f"chain.{service}")


def done_queue(settings: Settings) -> str:
    return settings.queue("chain.done")


def build(settings: Settings) -> Celery:
    app = make_app(settings, "chain")
    reply_to = direct(done_queue(settings))
    for service in order_app.services:
        runner = StepRunner(settings, service)
        for operation in service.operations:
            app.task(
                name=f"chain.{operation}",
                bind=True,
                acks_late=True,
                queue=queue(settings, service.name),
                # this app's own: not in Celery's shared registry, where a second build
                # (the module's app, then the bench's) would collide with the first
                shared=False,
            )(_task(runner, operation, reply_to))
    return app


def _task(runner: StepRunner, operation: str, reply_to: Any) -> Any:
    def run(task: Task, body: dict[str, Any], last: bool = False) -> None:
        command = Command.from_wire(operation, body)
        result = runner.run(command, int(task.request.retries))
        if isinstance(result, Retry):
            raise task.retry(countdown=result.countdown, exc=result.error)
        if last and result is not None:
            send(task.app, reply_to, OUTCOME_TASK, result.to_wire())

    run.__name__ = operation
    return run


app = build(config.load())
