"""kombu's Redis transport, with one redis-py client per channel instead of one per command;
messages in kombu's stored form, for processes that push them themselves.

kombu builds a new client object for every publish, acknowledgement and receipt it sends
outside its poll (``Channel.conn_or_acquire``), and building one costs more than the command
it carries (profiled: a seventh of a service worker's CPU). A client holds no connection of
its own (each command takes one from the channel's pool and gives it back), so one per
channel serves every such command, from any thread, as the fresh ones did.

A process that sends a message with commands of its own (the orchestrator's take script,
a worker's outcome) writes it in the form kombu stores (``stored_message``), and Celery's
consumers read it as one of kombu's.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property, partial
from queue import Empty
from typing import Any
from urllib.parse import urlparse

import redis as redis_py
from kombu.transport import redis
from kombu.utils.encoding import bytes_to_str

from saga_core import dead_letters, wire
from saga_core.errors import MalformedMessage

#: Seconds a ``push`` waits for Redis before kombu's publish, with its retries, takes over.
PUSH_TIMEOUT = 5.0

#: What ``broker_transport`` names for a ``redis://`` broker URL.
NAME = "saga_core.redis_transport:Transport"


def envelope(item: bytes | str) -> dict[str, Any]:
    """A message as kombu stores it on a Redis list, read within ``saga_core.wire``'s bounds
    and checked for what kombu reads of it before any task does; raises
    :class:`MalformedMessage` naming what is wrong."""
    message = wire.loads(item)
    if not isinstance(message, dict):
        raise MalformedMessage(f"not a message: a {type(message).__name__}, not an object")
    properties, body = message.get("properties"), message.get("body")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_tag"), str):
        raise MalformedMessage("not a message: properties without a delivery_tag")
    if not isinstance(properties.get("delivery_info", {}), dict):
        raise MalformedMessage("not a message: delivery_info is not an object")
    if not isinstance(message.get("headers") or {}, dict):
        raise MalformedMessage("not a message: headers are not an object")
    if not isinstance(body, str):
        raise MalformedMessage("not a message: no body")
    if properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except ValueError:
            raise MalformedMessage("not a message: its body is not base64") from None
    return message


def serves(broker_url: str) -> bool:
    """Whether ``broker_url`` is plain Redis, which this transport serves (``rediss://`` and
    ``sentinel://`` keep kombu's own)."""
    return urlparse(broker_url).scheme == "redis"


def stored_message(
    queue: str, headers: dict[str, Any], properties: dict[str, Any], body: Any
) -> str:
    """A Celery message with ``body`` (JSON) as kombu's Redis transport stores it on the
    list of ``queue``, sent to it straight (the default exchange, priority 0): what a
    process that pushes messages with its own commands (a script call, say) writes, in
    place of kombu's publish. tests/integration/test_redis_inbox.py holds it to kombu's."""
    return stored_bytes(queue, headers, properties, json.dumps(body).encode())


def stored_bytes(
    queue: str, headers: dict[str, Any], properties: dict[str, Any], payload: bytes
) -> str:
    """:func:`stored_message` for a body given as the bytes it is sent as (JSON or not)."""
    return json.dumps(
        {
            "body": base64.b64encode(payload).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                **properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


#: This process's clients, by broker URL: each holds a pool of connections (redis-py makes
#: a new pool in a forked child).
_clients: dict[str, redis_py.Redis] = {}


def push(url: str, queue: str, message: str) -> bool:
    """LPUSH ``message`` (``stored_message``) onto ``queue`` on the Redis at ``url``;
    False where Redis did not answer that it took it (the caller publishes another way)."""
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis_py.Redis.from_url(
            url, socket_timeout=PUSH_TIMEOUT, socket_connect_timeout=PUSH_TIMEOUT
        )
    try:
        client.lpush(queue, message)
    except (redis_py.RedisError, OSError):
        return False
    return True


class Channel(redis.Channel):
    """kombu's channel, reading every message it takes within ``saga_core.wire``'s bounds:
    one it cannot read goes to the dead letters (``transport_options["dead_letters"]``, a
    list's name) instead of ending the worker's event loop, as kombu's own read does."""

    @cached_property
    def _commands(self) -> Any:
        return self._create_client()

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own, but for how the message is read
        try:
            try:
                dest_item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest_item:
                raise Empty()
            dest, item = dest_item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            message = self._envelope(dest, item)
            if message is not None:
                self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu 5.6 and later
            if flush is not None:
                flush()

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    message = self._envelope(queue, item)
                    if message is None:
                        break
                    return message
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def _envelope(self, queue: str, item: bytes) -> dict[str, Any] | None:
        """The message stored as ``item``, or None where it is dead-lettered."""
        try:
            return envelope(item)
        except MalformedMessage as exc:
            name = self.connection.client.transport_options.get("dead_letters")
            if name:
                dead_letters.keep(
                    queue, exc.message, item, partial(dead_letters.push, self._commands, name)
                )
            else:
                dead_letters.warn(queue, exc.message, len(item))
            dead_letters.refused(queue, "malformed")
            return None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._commands


class Transport(redis.Transport):
    Channel = Channel
