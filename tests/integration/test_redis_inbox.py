"""The orchestrator's Redis reader (``orchestrator.inbox.RedisInbox``) on the real Redis,
with messages Celery sent: batches in order, nothing lost when a reader dies holding one,
nothing left behind once acknowledged; its outbox's commands out before the
acknowledgement, in the form kombu stores and Celery's workers read."""

from __future__ import annotations

import json
from unittest.mock import ANY

import pytest
import redis
from kombu import Producer

from orchestrator.inbox import RedisInbox
from saga_core import celery_app, redis_transport
from saga_core.celery_app import direct, make_app, publish_task, stored_task
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


def stored(settings: Settings, queue: str, n: int) -> str:
    """A command for ``queue`` as the orchestrator puts it in its outbox."""
    app = make_app(settings)
    return stored_task(app, queue, "payment.charge", {"n": n})


def handled_with_a_command(settings: Settings, seen: list[int]) -> tuple[RedisInbox, str]:
    """A reader that handled a batch, its command in the outbox (once out, the length of
    the command's queue is added to ``seen``); and the command's queue."""
    service_queue = settings.queue("payment")
    inbox = RedisInbox(settings.broker_url, send(settings, 1), batch_size=10, lease=10)
    batch = inbox.take(wait=1)
    inbox.outbox.add(service_queue, stored(settings, service_queue, 7))
    client = redis.Redis.from_url(settings.broker_url)
    inbox.outbox.when_sent(lambda: seen.append(client.llen(service_queue)))
    inbox.ack(batch)
    return inbox, service_queue


def test_the_outbox_goes_out_with_the_next_take_and_celery_reads_it(
    settings: Settings, redis_only: None
) -> None:
    seen: list[int] = []
    inbox, service_queue = handled_with_a_command(settings, seen)
    client = redis.Redis.from_url(settings.broker_url)
    assert client.llen(service_queue) == 0 and seen == []  # held until the next call
    assert inbox.take(wait=0.1) == []
    assert seen == [1]  # told once it was out (the orchestrator's after_publish hooks)
    assert client.llen(inbox.taken) == 0  # acknowledged in that call, after the push
    # what a worker's consumer (kombu's, as Celery runs it) reads from the service's queue
    with make_app(settings).connection_for_write() as connection:
        message = connection.SimpleQueue(service_queue, no_ack=True).get(timeout=2)
        assert message.headers["task"] == "payment.charge"
        assert message.decode() == [[{"n": 7}], {}, ANY]
        assert message.delivery_info["routing_key"] == service_queue
    inbox.close()


def test_a_stored_message_is_what_kombu_itself_stores(settings: Settings, redis_only: None) -> None:
    queue = settings.queue("payment")
    app = make_app(settings)
    with app.connection_for_write() as connection:
        publish_task(app, Producer(connection.channel()), queue, "payment.charge", {"n": 7})
    client = redis.Redis.from_url(settings.broker_url)
    kombus, ours = json.loads(client.rpop(queue)), json.loads(stored(settings, queue, 7))
    assert kombus.keys() == ours.keys()
    assert kombus["properties"].keys() == ours["properties"].keys()
    assert kombus["headers"].keys() == ours["headers"].keys()
    for same in ("content-type", "content-encoding", "body"):
        assert kombus[same] == ours[same]
    for same in ("delivery_info", "delivery_mode", "priority", "body_encoding"):
        assert kombus["properties"][same] == ours["properties"][same]


def test_a_push_that_fails_leaves_the_batch_unacknowledged(
    settings: Settings, redis_only: None
) -> None:
    queue = send(settings, 1)
    broken = settings.queue("payment")
    client = redis.Redis.from_url(settings.broker_url)
    client.set(broken, "not a list")  # LPUSH onto it fails
    inbox = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10, name="one")
    batch = inbox.take(wait=1)
    inbox.outbox.add(broken, stored(settings, broken, 7))
    sent: list[bool] = []
    inbox.outbox.when_sent(lambda: sent.append(True))
    inbox.ack(batch)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        inbox.take(wait=0.1)
    assert client.llen(inbox.taken) == 1 and not sent  # still held: not acknowledged
    again = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10, name="one")
    assert numbers(again.take(wait=1)) == [1]  # comes again when the reader reconnects
    again.close()
    client.delete(broken)


def test_closing_sends_the_outbox_before_it_acknowledges(
    settings: Settings, redis_only: None
) -> None:
    seen: list[int] = []
    inbox, service_queue = handled_with_a_command(settings, seen)
    inbox.close()
    client = redis.Redis.from_url(settings.broker_url)
    assert client.llen(service_queue) == 1 and client.llen(inbox.taken) == 0
    assert seen == [1]


def test_an_outcome_goes_out_as_one_push_or_else_through_kombu(
    settings: Settings, redis_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = settings.queue(ORCHESTRATOR_QUEUE)
    app = make_app(settings)
    pushed: list[bool] = []
    published: list[str] = []
    push, publish = redis_transport.push, celery_app.publish_task

    def counted_push(*args: object) -> bool:
        pushed.append(push(*args))  # type: ignore[arg-type]
        return pushed[-1]

    def counted_publish(*args: object, **options: object) -> None:
        published.append(str(args[2]))
        publish(*args, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(redis_transport, "push", counted_push)
    monkeypatch.setattr(celery_app, "publish_task", counted_publish)
    celery_app.send(app, direct(queue), OUTCOME_TASK, {"n": 1})
    assert (pushed, published) == ([True], [])  # one push, and kombu never asked
    monkeypatch.setattr(redis_transport, "push", lambda *args: False)  # Redis did not answer
    celery_app.send(app, direct(queue), OUTCOME_TASK, {"n": 2})
    assert published == [queue]  # so kombu sent it
    inbox = RedisInbox(settings.broker_url, queue, batch_size=10, lease=10)
    batch = inbox.take(wait=1)
    assert numbers(batch) == [1, 2]
    assert [m.headers["task"] for m in batch] == [OUTCOME_TASK] * 2
    inbox.ack(batch)
    inbox.close()


def test_a_take_gathers_a_bounded_number_of_bytes(settings: Settings, redis_only: None) -> None:
    from orchestrator.inbox import TAKE_BUDGET

    # Given messages of 3 MiB each on the queue, as any client of Redis can push them
    queue = settings.queue(ORCHESTRATOR_QUEUE)
    client = redis.Redis.from_url(settings.broker_url)
    big = b"x" * (3 << 20)
    client.lpush(queue, big, big, big)
    inbox = RedisInbox(settings.broker_url, queue, batch_size=200, lease=10)
    # Then a take stops once it holds the budget: the message that crosses it included
    first = inbox.take(wait=1)
    assert len(first) == 2 and sum(len(m.body) for m in first) < TAKE_BUDGET + len(big)
    inbox.ack(first)
    assert len(inbox.take(wait=1)) == 1
    inbox.close()
