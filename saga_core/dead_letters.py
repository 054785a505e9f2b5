"""Dead letters: where a message that cannot be read goes instead of the process that
took it.

A process that refuses a message (``saga_core.wire``'s bounds, the contract of
``saga_core.messages``, an unknown task, a signature that does not hold) logs why at
WARNING, never the body, counts it (the ``refused`` hook of ``saga_core.middleware``) and
moves it here, then goes on with its next message. An operator lists them with ``saga
dead-letters`` and empties the place with ``saga dead-letters --purge``.

The place is a queue of the system's own on the broker (``saga.dead-letters``, under the
system's queue prefix): a Redis list, or a RabbitMQ queue that keeps the newest
:data:`MAX_KEPT`. Each entry is a JSON record: which queue the message came from, why it was
refused, when, by whom, its size and its first :data:`MAX_RAW` bytes (base64).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import redis
from kombu import Connection, Queue

from saga_core import broker
from saga_core.config import Settings

log = logging.getLogger("saga.dead_letters")

#: The queue's name, under the system's prefix (``Settings.queue``).
QUEUE = "saga.dead-letters"

#: Entries kept: older ones give way to newer (a flood of poison cannot fill the broker).
MAX_KEPT = 10_000

#: Bytes of a message kept with its entry: enough to see what it was.
MAX_RAW = 64 * 1024

#: Who is told of each dead letter: ``(kind, reason)``, as ``Middleware.refused`` (a
#: worker's refusal counts, the orchestrator's metrics). Hooks, so that the broker's
#: transport, which knows no middleware, can tell them too.
_listeners: list[Callable[[str, str], None]] = []


def listen(callback: Callable[[str, str], None]) -> None:
    """Tell ``callback`` of every message this process dead-letters."""
    if callback not in _listeners:
        _listeners.append(callback)


def refused(kind: str, reason: str) -> None:
    for callback in list(_listeners):
        try:
            callback(kind, reason)
        except Exception:  # a counter must not cost the message its dead letter
            log.exception("a dead-letter listener failed")


@dataclass(frozen=True)
class DeadLetter:
    """One refused message."""

    queue: str
    reason: str
    at: float
    by: str
    size: int
    head: bytes  # the message's first MAX_RAW bytes

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "queue": self.queue,
                "reason": self.reason,
                "at": self.at,
                "by": self.by,
                "size": self.size,
                "head": base64.b64encode(self.head).decode(),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        try:
            d = json.loads(raw)
            return cls(
                str(d["queue"]),
                str(d["reason"]),
                float(d["at"]),
                str(d["by"]),
                int(d["size"]),
                base64.b64decode(d["head"]),
            )
        except (ValueError, TypeError, KeyError):
            return cls("?", "an entry that is not a dead letter's", 0.0, "?", len(raw), b"")

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "reason": self.reason,
            "at": self.at,
            "by": self.by,
            "size": self.size,
            "head": self.head.decode("utf-8", "replace"),
        }


def letter(queue: str, reason: str, raw: bytes | str) -> DeadLetter:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    by = f"{socket.gethostname()}:{os.getpid()}"
    return DeadLetter(queue, reason[:200], round(time.time(), 3), by, len(data), data[:MAX_RAW])


def warn(queue: str, reason: str, size: int) -> None:
    """The log line of a refusal: the reason and the size, never the body."""
    log.warning("refusing a message on %s (%d bytes): %s; dead-lettered", queue, size, reason)


def keep(queue: str, reason: str, raw: bytes | str, push: Callable[[str], None]) -> bool:
    """Log the refusal of a message of ``queue`` (:func:`warn`) and ``push`` its entry;
    False where the broker did not take it, which costs the entry, never the caller."""
    entry = letter(queue, reason, raw)
    warn(queue, reason, entry.size)
    try:
        push(entry.to_json())
    except Exception as exc:  # the broker's errors, whichever transport raised them
        log.error("a dead letter was not kept (%s): the broker did not take it", exc)
        return False
    return True


def amqp_queue(name: str, quorum: bool = False) -> Queue:
    """The dead-letter queue on RabbitMQ: it keeps the newest :data:`MAX_KEPT`; a quorum
    queue (replicated) where the system's queues are."""
    arguments: dict[str, Any] = {"x-max-length": MAX_KEPT, "x-overflow": "drop-head"}
    if quorum:
        arguments["x-queue-type"] = "quorum"
    return Queue(name, routing_key=name, queue_arguments=arguments)


def for_system(settings: Settings) -> DeadLetters:
    """The dead letters of the system ``settings`` describe."""
    return DeadLetters(settings.broker_url, settings.queue(QUEUE), settings.quorum_queues)


class DeadLetters:
    """The dead-letter queue ``name`` on the broker at ``url`` (on RabbitMQ a quorum queue,
    where ``quorum``)."""

    def __init__(self, url: str, name: str, quorum: bool = False):
        self.url, self.name, self.quorum = url, name, quorum
        # Redis is written to directly; RabbitMQ (and kombu's in-memory transport, for
        # tests) through kombu, on a connection kept for the next one
        self.through_kombu = urlparse(url).scheme not in ("redis", "rediss", "unix")
        self._client: redis.Redis | None = None
        self._kept: Connection | None = None

    def put(self, queue: str, reason: str, raw: bytes | str) -> None:
        """Move a refused message of ``queue`` here, and log why (the caller counts it). A
        broker that does not take the entry costs the entry, not the process: the refusal
        is logged either way."""
        if not keep(queue, reason, raw, self._push):
            self.close()

    def _push(self, entry: str) -> None:
        if not self.through_kombu:
            push(self._redis(), self.name, entry)
            return
        if self._kept is None:
            self._kept = self._connection()
        self._kept.Producer(serializer="json").publish(
            entry,
            exchange="",
            routing_key=self.name,
            declare=[amqp_queue(self.name, self.quorum)],
            content_type="application/json",
            content_encoding="utf-8",
            retry=True,
            retry_policy={"max_retries": 2},
        )

    def _connection(self) -> Connection:
        if broker.is_amqp(self.url):
            return broker.amqp_connection(self.url, connect_timeout=5)
        return Connection(self.url)

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(url=self.url, socket_timeout=5)
        return self._client

    def list(self, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` entries, newest first, left in place."""
        if not self.through_kombu:
            return [DeadLetter.from_json(e) for e in self._redis().lrange(self.name, 0, limit - 1)]
        found: list[DeadLetter] = []
        with self._connection() as connection:
            channel = connection.channel()
            amqp_queue(self.name, self.quorum)(channel).declare()
            # taken unacknowledged, then given back when the channel closes
            while True:
                message = channel.basic_get(self.name, no_ack=False)
                if message is None:
                    break
                found.append(DeadLetter.from_json(message.body))
            with contextlib.suppress(Exception):
                channel.close()
        return list(reversed(found))[:limit]

    def purge(self) -> int:
        """Empty the place; how many entries there were."""
        if not self.through_kombu:
            client = self._redis()
            with client.pipeline() as pipe:
                pipe.llen(self.name)
                pipe.delete(self.name)
                count, _ = pipe.execute()
            return int(count)
        with self._connection() as connection:
            channel = connection.channel()
            amqp_queue(self.name, self.quorum)(channel).declare()
            return int(channel.queue_purge(self.name) or 0)

    def close(self) -> None:
        client, kept, self._client, self._kept = self._client, self._kept, None, None
        with contextlib.suppress(Exception):
            if client is not None:
                client.close()
            if kept is not None:
                kept.release()


def push(client: Any, name: str, entry: str) -> None:
    """LPUSH ``entry`` onto the Redis list ``name``, keeping the newest :data:`MAX_KEPT`."""
    with client.pipeline(transaction=True) as pipe:
        pipe.lpush(name, entry)
        pipe.ltrim(name, 0, MAX_KEPT - 1)
        pipe.execute()
