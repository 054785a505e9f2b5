"""The orchestrator's queue, read a batch at a time and acknowledged a batch at a time.

Two readers take the same Celery messages. On RabbitMQ (and any broker but plain Redis)
kombu's consumer does: with a prefetch of a batch, its per-message acknowledgements cost
little. On Redis, kombu keeps every unacknowledged message in an index and a hash of its
own, a MULTI/EXEC to record each one and another to forget it: over half of the
orchestrator's CPU (profiled, docs/benchmarks.md). :class:`RedisInbox` keeps the same
promise, that a message stays in Redis until its batch is handled, with one list per reader
instead: a batch moves from the queue into the reader's list in one script call, and its
acknowledgement deletes the list, in the same script call as the next take. The batch's
commands go out in that call too, pushed before the acknowledgement (:class:`Outbox`): a
batch costs one call to Redis. A reader that dies leaves
its list behind, handled or not: it is moved
back onto the queue by the reader itself when it reconnects, or by any reader once the dead
one's lease (refreshed at every take) has run out.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis
from kombu import Connection, Consumer, Queue
from kombu.message import Message

from saga_core import wire
from saga_core.errors import MalformedMessage


class Delivery(Protocol):
    """One message taken from the queue: its Celery headers, its bytes as they came (for
    the dead letters) and its decoded body."""

    headers: dict[str, Any]
    body: bytes

    def decode(self) -> Any: ...


class Inbox(Protocol):
    def take(self, wait: float) -> Sequence[Delivery]:
        """Wait up to ``wait`` seconds for a first message, then take whatever else has
        already arrived, up to a batch."""
        ...

    def ack(self, batch: Sequence[Delivery]) -> None:
        """Remove ``batch`` from the broker for good: it has been handled (on Redis at the
        next take, or at close: a reader that dies in between has it delivered again, and
        its outcomes are refused as duplicates)."""
        ...

    def flush(self) -> None:
        """Send now the commands that would go out with the next take (on Redis)."""
        ...

    def rescue(self) -> int:
        """Put back on the queue what readers that died held; how many messages."""
        ...

    def close(self) -> None:
        """Stop reading; what was taken and not acknowledged goes back to the queue."""
        ...


class KombuInbox:
    """kombu's consumer, prefetching a batch; messages acknowledged one by one."""

    def __init__(self, connection: Connection, queue: Queue, batch_size: int):
        self.connection, self.batch_size = connection, batch_size
        self._messages: list[Message] = []
        self._consumer = Consumer(
            connection.default_channel,
            queues=[queue],
            on_message=self._messages.append,
            prefetch_count=batch_size,
            accept=["json"],
        )
        self._consumer.consume()

    def take(self, wait: float) -> list[Message]:
        timeout = wait
        while len(self._messages) < self.batch_size:
            try:
                self.connection.drain_events(timeout=timeout)
            except TimeoutError:
                break
            timeout = 0
        # Taken out before handling: on RabbitMQ, waiting for publisher confirms delivers
        # more messages meanwhile, and they belong to the next batch.
        batch, self._messages[:] = list(self._messages), []
        return batch

    def ack(self, batch: Sequence[Delivery]) -> None:
        for message in batch:
            message.ack()  # type: ignore[attr-defined]

    def flush(self) -> None:
        pass  # commands are published as they are sent

    def rescue(self) -> int:
        return 0  # the broker requeues a dead consumer's messages itself

    def close(self) -> None:
        self._messages.clear()  # unacknowledged: the broker delivers them again
        self._consumer.cancel()


class RedisDelivery:
    """A Celery message as kombu's Redis transport stores it (a JSON envelope, the body in
    base64), read within ``saga_core.wire``'s bounds."""

    def __init__(self, raw: bytes):
        self.body = raw
        self.headers: dict[str, Any] = {}
        self._body: Any = None
        self._content_type: Any = None
        self._base64 = False
        try:
            envelope = wire.loads(raw)
            if not isinstance(envelope, dict):
                raise MalformedMessage(f"a {type(envelope).__name__}, not an object")
            headers = envelope.get("headers") or {}
            if not isinstance(headers, dict):  # read by the orchestrator before decoding
                raise MalformedMessage(f"headers are a {type(headers).__name__}, not an object")
            properties = envelope.get("properties") or {}
            if not isinstance(properties, dict):
                raise MalformedMessage("properties are not an object")
            self.headers = headers
            self._body = envelope["body"]
            self._content_type = envelope.get("content-type")
            self._base64 = properties.get("body_encoding") == "base64"
        except MalformedMessage as exc:
            self._error = f"not a message of kombu's: {exc.message}"
        except KeyError:
            self._error = "not a message of kombu's: no body"
        else:
            self._error = ""

    def decode(self) -> Any:
        if self._error:
            raise MalformedMessage(self._error)
        if self._content_type != "application/json":  # JSON only; worded as kombu words it
            raise MalformedMessage(
                f"Refusing to deserialize untrusted content of type {self._content_type!r:.60}"
            )
        if not isinstance(self._body, str):
            raise MalformedMessage("a body that is not text")
        try:
            body = base64.b64decode(self._body, validate=True) if self._base64 else self._body
        except ValueError:
            raise MalformedMessage("a body that is not base64") from None
        return wire.loads(body)


#: Seconds a take blocks at most: below redis-py's default socket timeout (5 s).
MAX_BLOCK = 2.0

#: Bytes a take gathers at most before it stops (the message that crosses the line
#: included): poison of a megabyte, or more, a batch of it would hold in memory at once.
TAKE_BUDGET = 4 << 20

#: Pushes the ARGV[4] messages of the outbox (ARGV[5 + i] onto the list KEYS[4 + i]), then
#: empties the reader's list (KEYS[2]) where ARGV[3] is 1 (its batch was handled), then
#: moves up to ARGV[1] messages from the queue (KEYS[1]) onto it, the oldest first, until
#: they come to ARGV[5] bytes, renews the reader's lease (KEYS[3], ARGV[2] ms) and keeps the
#: reader in the set of readers (KEYS[4]), where a rescuer that found its lease gone may
#: have taken it out. A push that fails ends the script before the acknowledgement.
_TAKE = """
for i = 1, tonumber(ARGV[4]) do redis.call('LPUSH', KEYS[4 + i], ARGV[5 + i]) end
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[4], KEYS[2])
local taken, bytes, budget = {}, 0, tonumber(ARGV[5])
for i = 1, tonumber(ARGV[1]) do
  if bytes >= budget then break end
  local m = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
  if not m then break end
  taken[i] = m
  bytes = bytes + string.len(m)
end
return taken
"""

#: Puts a reader's list (KEYS[2]) back at the head of the queue (KEYS[1]), in its order.
_GIVE_BACK = """
local n = 0
while true do
  local m = redis.call('LPOP', KEYS[2])
  if not m then break end
  redis.call('RPUSH', KEYS[1], m)
  n = n + 1
end
return n
"""

#: Gives back the list of every reader of the queue (KEYS[1]) in the set of readers
#: (KEYS[2]) whose lease is gone; returns how many messages went back.
_RESCUE = """
local n = 0
for _, list in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', list .. '.lease') == 0 then
    while true do
      local m = redis.call('LPOP', list)
      if not m then break end
      redis.call('RPUSH', KEYS[1], m)
      n = n + 1
    end
    redis.call('SREM', KEYS[2], list)
  end
end
return n
"""


class Outbox:
    """Messages for Redis lists (kombu's stored form, ``redis_transport.stored_message``),
    held until the reader's next call to Redis pushes them, before it acknowledges the
    batch that sent them. Pushing them later than a publish would changes nothing a crash
    can show: a crash after a batch's commit and before its commands are out leaves steps
    that no worker takes, and the sweeper finds them lost, either way."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str]] = []
        self.callbacks: list[Callable[[], None]] = []

    def add(self, queue: str, message: str) -> None:
        self.pending.append((queue, message))

    def when_sent(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once what the outbox holds now is pushed (never, if it is not)."""
        self.callbacks.append(callback)

    def drain(self) -> tuple[list[tuple[str, str]], list[Callable[[], None]]]:
        pending, callbacks = self.pending, self.callbacks
        self.pending, self.callbacks = [], []
        return pending, callbacks


class RedisInbox:
    """The queue on Redis, read through a list of this reader's own (see the module's
    docstring). ``lease`` seconds without a take and its list is anyone's to give back.
    What ``outbox`` holds goes out with the next take, or at :meth:`flush`."""

    def __init__(
        self,
        url: str,
        queue: str,
        batch_size: int,
        lease: float,
        name: str = "",
        outbox: Outbox | None = None,
    ):
        self.queue, self.batch_size = queue, batch_size
        self.outbox = outbox if outbox is not None else Outbox()
        self.lease_ms = int(lease * 1000)
        self.client = redis.Redis.from_url(url)
        self.readers = f"{queue}.readers"
        self.taken = f"{queue}.reader.{name or uuid.uuid4().hex}"
        self._take = self.client.register_script(_TAKE)
        self._give_back = self.client.register_script(_GIVE_BACK)
        self._rescue = self.client.register_script(_RESCUE)
        self._keys = [queue, self.taken, f"{self.taken}.lease", self.readers]
        self._handled = False  # the list holds a batch acknowledged since the last take
        # What this reader held when it lost its connection goes first; the lease and the
        # registration are taken with it (a take without a message renews both).
        self._give_back(keys=[queue, self.taken])
        self._call_take(0, handled=False)

    def _call_take(self, batch_size: int, handled: bool) -> list[Any]:
        """The take script: the outbox pushed, the handled batch acknowledged, a batch
        taken."""
        pushes, sent = self.outbox.drain()
        taken = self._take(
            keys=[*self._keys, *(q for q, _ in pushes)],
            args=[
                batch_size,
                self.lease_ms,
                int(handled),
                len(pushes),
                TAKE_BUDGET,
                *(m for _, m in pushes),
            ],
        )
        for callback in sent:
            callback()
        return list(taken)

    def flush(self) -> None:
        """Push what the outbox holds now (a reply that must follow them waits for it):
        the take script, taking and acknowledging nothing."""
        if self.outbox.pending or self.outbox.callbacks:
            self._call_take(0, handled=False)

    def take(self, wait: float) -> list[RedisDelivery]:
        raw = self._call_take(self.batch_size, self._handled)
        self._handled = False
        if not raw and wait > 0:
            # a longer wait would end in a socket timeout error; the caller asks again
            wait = min(wait, MAX_BLOCK)
            first = self.client.brpoplpush(self.queue, self.taken, timeout=wait)
            # Handled alone, at once: what arrives meanwhile is the next take's batch, and
            # a second call here would put a round trip between each outcome and its
            # command whenever the queue runs dry.
            raw = [] if first is None else [first]
        return [RedisDelivery(m) for m in raw]

    def ack(self, batch: Sequence[Delivery]) -> None:
        if batch:
            self._handled = True  # deleted by the next take's call

    def rescue(self) -> int:
        """Put the messages of readers whose lease ran out back on the queue; how many."""
        return int(self._rescue(keys=[self.queue, self.readers]))

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.flush()  # before the acknowledgement of the batch that sent them
            if self._handled:
                self.client.delete(self.taken)
            self._give_back(keys=[self.queue, self.taken])
            self.client.srem(self.readers, self.taken)
            self.client.delete(f"{self.taken}.lease")
        self.client.close()
