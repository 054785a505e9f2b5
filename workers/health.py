"""The worker's answer to a health check (``saga ping SERVICE``, ``saga_core.ping``)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from saga_core import ping
from saga_core.errors import MalformedMessage
from saga_core.messages import PING_TASK, Ping

log = logging.getLogger("saga.worker")


def register(app: Celery) -> None:
    """Register the ``saga.ping`` task: it runs in a pool slot like a step, so a pong says
    that the worker takes messages from the queue the ping came on and runs them."""

    # Not acknowledged late: a ping lost with its worker is a failed check, nothing more.
    @app.task(name=PING_TASK, bind=True, acks_late=False, ignore_result=True, shared=False)
    def pong(task: Task, *args: Any, **kwargs: Any) -> None:
        try:
            if kwargs or len(args) != 1:
                raise MalformedMessage("ping: expected one argument, the ping object")
            request = Ping.from_wire(args[0])
        except MalformedMessage as exc:
            log.error("refusing a malformed ping: %s", exc.message)
            return
        with task.app.producer_or_acquire() as producer:
            ping.answer(producer, request, task.request.hostname or "worker")
