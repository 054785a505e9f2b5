"""Health checks: a ping through a process's own queue, answered by that process.

A worker is healthy when it takes messages from its service's queue and runs them; the
orchestrator, when it takes messages from its queue and applies them to the store. That a
port answers or a process exists proves neither. So ``saga ping SERVICE`` puts a ping in
the service's queue like any command, and waits for the pong on a queue of its own
(``saga.pong.<hex>``; a process answers into no other). Celery's own ping is a remote
control command, and remote control stays off: it would let anyone on the broker shut a
worker down.

A ping waits its turn behind the commands already queued, so a service with a backlog
answers late: give the check a timeout above the longest step.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

from celery import Celery
from kombu import Consumer, Exchange, Producer, Queue
from kombu.exceptions import KombuError
from kombu.message import Message

from saga_core.celery_app import publish_task
from saga_core.errors import MalformedMessage
from saga_core.messages import PING_TASK, Ping, Pong


def answer(producer: Producer, ping: Ping, responder: str) -> bool:
    """Send ``responder``'s pong for ``ping``; False (nothing sent) past its deadline."""
    if time.time() > ping.deadline:
        return False
    producer.publish(
        Pong(responder, os.getpid()).to_wire(),
        exchange="",
        routing_key=ping.reply_to,
        serializer="json",
    )
    return True


def ask(app: Celery, queue: str, timeout: float) -> Pong:
    """Ping whoever consumes ``queue`` through ``app``'s broker and return the first pong;
    ``TimeoutError`` when none comes within ``timeout`` seconds."""
    name = f"saga.pong.{uuid.uuid4().hex}"
    reply = Queue(name, Exchange(""), routing_key=name, auto_delete=True, durable=False)
    pongs: list[Pong] = []

    def received(message: Message) -> None:
        message.ack()
        # not an answer (or not one that can be read): wait for one
        with contextlib.suppress(MalformedMessage, KombuError):
            pongs.append(Pong.from_wire(message.decode()))

    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        channel = connection.default_channel
        bound = reply(channel)
        bound.declare()
        try:
            deadline = time.monotonic() + timeout
            ping = Ping(name, time.time() + timeout)
            publish_task(app, Producer(channel), queue, PING_TASK, ping.to_wire())
            with Consumer(channel, [reply], on_message=received, accept=["json"]):
                while not pongs:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"no answer from queue {queue!r} in {timeout:g}s")
                    try:
                        connection.drain_events(timeout=min(left, 0.5))
                    except TimeoutError:
                        continue
        finally:
            # A pong still on its way is lost with it: whoever answers checks the
            # deadline first, so only one sent at the last moment can be.
            bound.delete()
    return pongs[0]
