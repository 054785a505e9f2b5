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
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

import redis as redis_py
from kombu.transport import redis

#: Seconds a ``push`` waits for Redis before kombu's publish, with its retries, takes over.
PUSH_TIMEOUT = 5.0

#: What ``broker_transport`` names for a ``redis://`` broker URL.
NAME = "saga_core.redis_transport:Transport"


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
    payload = json.dumps(body).encode()
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
    @cached_property
    def _commands(self) -> Any:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._commands


class Transport(redis.Transport):
    Channel = Channel
