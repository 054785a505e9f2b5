"""The orchestrator's Redis reader (``orchestrator.inbox.RedisInbox``) on the real Redis,
with messages Celery sent: batches in order, nothing lost when a reader dies holding one,
nothing left behind once acknowledged."""

from __future__ import annotations

import pytest
import redis

from orchestrator.inbox import RedisInbox
from saga_core.celery_app import direct, make_app
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.errors import MalformedMessage
from saga_core.messages import OUTCOME_TASK
from saga_core.processes import wait_for


def send(settings: Settings, *numbers: int) -> str:
    """Celery messages carrying ``numbers``, sent as the workers send outcomes."""
    queue = settings.queue(ORCHESTRATOR_QUEUE)
    app = make_app(settings)
    for n in numbers:
        app.send_task(OUTCOME_TASK, args=[{"n": n}], queue=direct(queue))
    return queue


def numbers(batch: list) -> list[int]:
    return [m.decode()[0][0]["n"] for m in batch]


def test_batches_come_in_order_and_leave_nothing_once_acknowledged(
    settings: Settings, redis_only: None
) -> None:
    queue = send(settings, *range(7))
    inbox = RedisInbox(settings.broker_url, queue, batch_size=5, lease=10)
    first = inbox.take(wait=1)
    assert numbers(first) == [0, 1, 2, 3, 4]
    assert first[0].headers["task"] == OUTCOME_TASK
    inbox.ack(first)
    second = inbox.take(wait=1)
    assert numbers(second) == [5, 6]
    inbox.ack(second)
    assert inbox.take(wait=0.2) == []
    client = redis.Redis.from_url(settings.broker_url)
    assert client.llen(queue) == 0 and client.llen(inbox.taken) == 0
    inbox.close()
    assert not list(client.scan_iter(match=f"{queue}.reader*"))


def test_a_reader_that_waits_takes_the_first_message_to_arrive(
    settings: Settings, redis_only: None
) -> None:
    queue = settings.queue(ORCHESTRATOR_QUEUE)
    inbox = RedisInbox(settings.broker_url, queue, batch_size=5, lease=10)
    assert inbox.take(wait=0.1) == []
    send(settings, 42)
    assert numbers(inbox.take(wait=2)) == [42]
    inbox.close()


def test_a_wait_longer_than_the_clients_socket_timeout_ends_empty(
    settings: Settings, redis_only: None
) -> None:
    # (SAGA_SWEEP_INTERVAL=10, say: redis-py's socket timeout of 5 s ended the wait in an
    # error that took the orchestrator down)
    inbox = RedisInbox(settings.broker_url, settings.queue(ORCHESTRATOR_QUEUE), 5, lease=30)
    assert inbox.take(wait=6) == []
    inbox.close()


def test_a_dead_readers_batch_goes_back_first_once_its_lease_ends(
    settings: Settings, redis_only: None
) -> None:
    queue = send(settings, 1, 2, 3)
    dead = RedisInbox(settings.broker_url, queue, batch_size=2, lease=0.5)
    assert numbers(dead.take(wait=1)) == [1, 2]  # then it dies: no ack, no close
    send(settings, 4)
    other = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10)
    assert numbers(other.take(wait=1)) == [3, 4]  # the dead one's are not anyone's yet
    other.ack([])
    assert other.rescue() == 0
    wait_for(lambda: other.rescue() == 2, 10, "the dead reader's lease to run out")
    assert numbers(other.take(wait=1)) == [1, 2]
    other.close()


def test_a_reader_that_reconnects_takes_what_it_held_first(
    settings: Settings, redis_only: None
) -> None:
    queue = send(settings, 1, 2, 3)
    before = RedisInbox(settings.broker_url, queue, batch_size=2, lease=10, name="one")
    assert numbers(before.take(wait=1)) == [1, 2]
    again = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10, name="one")
    assert numbers(again.take(wait=1)) == [1, 2, 3]
    again.close()


def test_closing_gives_back_what_was_not_acknowledged(settings: Settings, redis_only: None) -> None:
    queue = send(settings, 1, 2)
    inbox = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10)
    assert numbers(inbox.take(wait=1)) == [1, 2]
    inbox.close()
    client = redis.Redis.from_url(settings.broker_url)
    assert client.llen(queue) == 2
    after = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10)
    assert numbers(after.take(wait=1)) == [1, 2]
    after.close()


def test_an_acknowledged_batch_never_comes_back(settings: Settings, redis_only: None) -> None:
    queue = send(settings, 1, 2)
    inbox = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10)
    inbox.ack(inbox.take(wait=1))
    inbox.close()  # before any other take
    after = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10)
    assert after.take(wait=0.2) == []
    send(settings, 3)
    first = after.take(wait=1)
    after.ack(first)
    assert numbers(first) == [3]
    assert numbers(after.take(wait=0.2)) == []  # the take that deletes the handled batch
    assert redis.Redis.from_url(settings.broker_url).llen(after.taken) == 0
    after.close()


def test_what_is_not_a_json_celery_message_is_refused_by_name(
    settings: Settings, redis_only: None
) -> None:
    queue = settings.queue(ORCHESTRATOR_QUEUE)
    client = redis.Redis.from_url(settings.broker_url)
    client.lpush(queue, b"\x80 not json")
    client.lpush(queue, b'{"body": "gASV", "content-type": "application/x-python-serialize"}')
    client.lpush(queue, b'{"body": "", "headers": ["saga.outcome"]}')
    inbox = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10)
    batch = inbox.take(wait=1)
    garbage, pickled, odd_headers = batch
    for message, error in (
        (garbage, "not a message"),
        (pickled, "untrusted content"),
        (odd_headers, "headers are a list"),
    ):
        assert isinstance(message.headers, dict)  # what the orchestrator reads first
        with pytest.raises(MalformedMessage) as refused:
            message.decode()
        assert error in refused.value.message
    inbox.ack(batch)
    inbox.close()


def test_a_slow_reader_that_was_rescued_is_rescued_again_when_it_dies(
    settings: Settings, redis_only: None
) -> None:
    # A reader slower than its lease had its batch put back (handled twice: the duplicates
    # are refused), then took again: it must still be found when it dies for good.
    queue = send(settings, 1)
    slow = RedisInbox(settings.broker_url, queue, batch_size=10, lease=0.3)
    other = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10)
    assert numbers(slow.take(wait=1)) == [1]
    wait_for(lambda: other.rescue() == 1, 10, "the slow reader's lease to run out")
    other.ack(other.take(wait=1))
    send(settings, 2)
    assert numbers(slow.take(wait=1)) == [2]  # then it dies
    wait_for(lambda: other.rescue() == 1, 10, "the dead reader's lease to run out")
    assert numbers(other.take(wait=1)) == [2]
    other.close()
