"""Celery's consumer, with what it cannot read moved to the dead letters.

Celery logs a message it cannot decode at CRITICAL with its body and drops it, and one of
an unknown task or an unknown shape at ERROR. Here each is refused as every process of the
system refuses a message (``saga_core.dead_letters``): the reason at WARNING, never the
body, counted, kept for an operator, and acknowledged, so it neither loops nor stops the
worker. The task's body is read within ``saga_core.wire``'s bounds before Celery's strategy
sees the message, so that nothing the pool would choke on reaches it.

Celery's native delayed delivery is left out. On quorum queues Celery sets it up at every
(re)connection: twenty-eight levels of exchanges and quorum queues, declared before the
worker takes anything again (six seconds of each reconnection after a node's loss,
measured). It serves only queues bound to topic or fanout exchanges, and a service queue
here is bound to a direct one: a retry's countdown is held in the worker, as on Redis,
where heartbeats name the step it holds (``workers.heartbeat``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message

from saga_core import dead_letters, wire
from saga_core.dead_letters import DeadLetters
from saga_core.errors import MalformedMessage
from saga_core.retry import MAX_BOUND

log = logging.getLogger("saga.worker")


class Consumer(CeleryConsumer):
    """Set as ``worker_consumer``; the dead letters' broker and queue are
    ``app.conf.saga_dead_letters``."""

    class Blueprint(CeleryConsumer.Blueprint):
        default_steps = [
            step
            for step in CeleryConsumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dead_letters = DeadLetters(*self.app.conf.saga_dead_letters)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        tasks = self.app.tasks

        def on_task_received(message: Message) -> Any:
            try:
                _check(message, tasks)
            except MalformedMessage as exc:
                return self.refuse(message, exc.message)
            return handle(message)

        return on_task_received

    def refuse(self, message: Message, reason: str) -> None:
        queue = str((message.delivery_info or {}).get("routing_key", "?"))
        self.dead_letters.put(queue, reason, message.body or b"")
        dead_letters.refused(queue, "malformed")
        message.ack()

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self.refuse(message, f"cannot be decoded: {str(exc)[:120]}")

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self.refuse(message, "not a task message")

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        self.refuse(message, f"unknown task {message.headers.get('task')!r:.60}")

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self.refuse(message, f"an invalid task message: {str(exc)[:120]}")


#: The furthest ahead a message may ask to run: a retry's longest backoff, and a minute for
#: clocks that differ. A message that asks for later would be held in memory until then.
MAX_ETA_AHEAD = MAX_BOUND + 60


def _check_timing(headers: dict[str, Any]) -> None:
    """Refuse what a message's headers ask of the worker's time: an ETA further than a
    retry's backoff can reach, or a time limit (none of this system's tasks has one, and
    a short one would end the process that runs a step)."""
    eta = headers.get("eta")
    if eta is not None:
        try:
            when = datetime.fromisoformat(str(eta)[:40])
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            ahead = (when - datetime.now(UTC)).total_seconds()
        except (ValueError, OverflowError):
            raise MalformedMessage("an eta that is not a time") from None
        if ahead > MAX_ETA_AHEAD:
            raise MalformedMessage(f"an eta {ahead:.0f}s ahead (at most {MAX_ETA_AHEAD}s)")
    limits = headers.get("timelimit")
    if limits is not None and (
        not isinstance(limits, list | tuple) or any(v is not None for v in limits)
    ):
        raise MalformedMessage("a time limit: no task here has one")


def _check(message: Message, tasks: Any) -> None:
    """Refuse a message whose task is unknown or whose body is not ``[args, kwargs, embed]``
    within bounds, before Celery reads it (it reads the body again, in the pool)."""
    headers = message.headers
    if not isinstance(headers, dict):
        raise MalformedMessage("not a task message: no headers")
    name = headers.get("task")
    if not isinstance(name, str) or name not in tasks:
        raise MalformedMessage(f"unknown task {name!r:.60}")
    if not isinstance(headers.get("id"), str):
        raise MalformedMessage("a task message without an id")
    _check_timing(headers)
    if message.content_type != "application/json":
        raise MalformedMessage(f"content type {message.content_type!r:.60}, not JSON")
    body = wire.loads(message.body or b"")
    if (
        not isinstance(body, list)
        or len(body) != 3
        or not isinstance(body[0], list)
        or not isinstance(body[1], dict)
        or not isinstance(body[2], dict | None)
    ):
        raise MalformedMessage("a task body that is not [args, kwargs, embed]")
