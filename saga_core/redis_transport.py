"""kombu's Redis transport, with one redis-py client per channel instead of one per command.

kombu builds a new client object for every publish, acknowledgement and receipt it sends
outside its poll (``Channel.conn_or_acquire``), and building one costs more than the command
it carries (profiled: a seventh of a service worker's CPU). A client holds no connection of
its own (each command takes one from the channel's pool and gives it back), so one per
channel serves every such command, from any thread, as the fresh ones did.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

from kombu.transport import redis

#: What ``broker_transport`` names for a ``redis://`` broker URL.
NAME = "saga_core.redis_transport:Transport"


def serves(broker_url: str) -> bool:
    """Whether ``broker_url`` is plain Redis, which this transport serves (``rediss://`` and
    ``sentinel://`` keep kombu's own)."""
    return urlparse(broker_url).scheme == "redis"


class Channel(redis.Channel):
    @cached_property
    def _commands(self) -> Any:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._commands


class Transport(redis.Transport):
    Channel = Channel
