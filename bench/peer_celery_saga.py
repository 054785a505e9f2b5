"""celery-saga (0.1.1; ``pip install -e .[peers]``) running the order saga's four steps:
``celery -A bench.peer_celery_saga worker -Q PREFIX.peer.celery-saga``.

Its saga is a Celery chain of its own tasks (start, a task per step, complete) on one
queue, its state one JSON document per saga in Redis (its Redis backend, on the broker's
Redis). Each of its steps calls the same services' step runners as a saga's steps and the
bare chain's do. No step fails here, so no compensation is registered: the peer is timed on
the path every order takes.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from celery import Celery
from celery_saga import Saga, set_default_backend
from celery_saga.backends import RedisSagaBackend

from bench.workload import Run, Steps, epoch, step_commands, submit_and_wait
from saga_core import config
from saga_core.celery_app import celery_config
from saga_core.config import Settings
from saga_core.messages import Command


def queue(settings: Settings) -> str:
    return settings.queue("peer.celery-saga")


def build(settings: Settings) -> tuple[Celery, Saga]:
    """Its Celery app (set as the current one: celery-saga sends through ``current_app``),
    with this project's Celery settings, and the order saga as celery-saga defines one."""
    app = Celery("peer-celery-saga")
    app.conf.update(celery_config(settings), task_default_queue=queue(settings), task_routes={})
    set_default_backend(RedisSagaBackend(url=settings.broker_url))
    steps = Steps(settings)
    saga = Saga("order")
    for index, operation in enumerate(command.operation for command in step_commands("x", 0)):
        task = app.task(name=f"peer.{operation}", shared=False)(_step(steps, operation, index))
        saga.add_step(task, no_compensation=True)
    return app, saga


def _step(steps: Steps, operation: str, index: int) -> Any:
    # celery-saga passes the saga's whole context as keyword arguments
    def run(**context: Any) -> dict[str, Any]:
        output = steps.run(Command.from_wire(operation, context["commands"][index]))
        return {operation: output}

    run.__name__ = operation
    return run


class CelerySagaRunner:
    """Sagas through celery-saga, seen ended by the bench's reader in its records (status
    ``completed``); each one's span in its own record (``created_at`` to ``updated_at``)
    is the recorded figure."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.app, self.saga = build(settings)
        self.client = redis.Redis.from_url(settings.broker_url)

    def run(self, tag: str, count: int, rate: float | None = None) -> Run:
        keys: list[str] = []

        def submit(n: int) -> str:
            wire = [command.to_wire() for command in step_commands(tag, n)]
            saga_id = str(self.saga.run(queue=queue(self.settings), commands=wire).saga_id)
            keys.append(RedisSagaBackend.PREFIX + saga_id)
            return saga_id

        def records(ids: list[str]) -> list[dict[str, Any]]:
            found = map(_load, self.client.mget([RedisSagaBackend.PREFIX + i for i in ids]))
            return [r for r in found if r and r["status"] == "completed"]

        def ended(pending: list[str]) -> list[str]:
            return [str(r["saga_id"]) for r in records(pending)]

        def recorded(ids: list[str]) -> list[tuple[float, float]]:
            return [(epoch(r["created_at"]), epoch(r["updated_at"])) for r in records(ids)]

        try:
            return submit_and_wait("celery-saga", count, rate, submit, ended, recorded)
        finally:
            if keys:  # its records would stay a day in the shared Redis
                self.client.delete(*keys)


def _load(raw: bytes | str | None) -> dict[str, Any] | None:
    return json.loads(raw) if raw else None


app, _saga = build(config.load())
