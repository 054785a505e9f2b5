"""The consumer watchdog's judgement, against fakeredis and Celery's worker state."""

from __future__ import annotations

import fakeredis
import pytest
from celery.worker import state

from saga_core import broker, watchdog


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(
        broker.redis.Redis,
        "from_url",
        classmethod(lambda cls, url, **kw: fakeredis.FakeRedis(server=server)),
    )
    return fakeredis.FakeRedis(server=server)


def make(clock: Clock) -> watchdog.ConsumerWatchdog:
    return watchdog.ConsumerWatchdog("redis://x", ["t.payment"], stall_timeout=10, clock=clock)


def test_messages_waiting_and_nothing_received_is_a_stall(fake: fakeredis.FakeRedis) -> None:
    clock = Clock()
    dog = make(clock)
    fake.rpush("t.payment", "m1", "m2")
    assert dog.check() == 0  # the clock starts
    clock.now = 9
    assert dog.check() == 0
    clock.now = 10
    assert dog.check() == 2


def test_progress_resets_the_clock(
    fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    dog = make(clock)
    fake.rpush("t.payment", "m1")
    dog.check()
    clock.now = 10
    monkeypatch.setattr(state, "all_total_count", [state.all_total_count[0] + 1])
    assert dog.check() == 0
    clock.now = 15
    assert dog.check() == 0


def test_empty_queue_or_busy_worker_is_no_stall(
    fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    dog = make(clock)
    dog.check()
    clock.now = 60
    assert dog.check() == 0  # nothing waiting
    fake.rpush("t.payment", "m1")
    monkeypatch.setattr(state, "requests", {"task-id": object()})
    dog.check()
    clock.now = 120
    assert dog.check() == 0  # a long task holds the only slot


def test_unreachable_broker_is_no_stall() -> None:
    dog = watchdog.ConsumerWatchdog("redis://127.0.0.1:1/0", ["q"], stall_timeout=0.01)
    assert dog.waiting() is None
    assert dog.check() == 0
