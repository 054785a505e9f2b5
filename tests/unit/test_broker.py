"""The code that talks to Redis directly, against fakeredis."""

from __future__ import annotations

import fakeredis
import pytest

from saga_core import broker


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    monkeypatch.setattr(
        broker.redis.Redis,
        "from_url",
        classmethod(lambda cls, url, **kw: fakeredis.FakeRedis(server=server)),
    )
    return client


def test_reachable(fake: fakeredis.FakeRedis) -> None:
    assert broker.reachable("redis://127.0.0.1:1/0")


def test_unreachable_server_is_reported_not_raised() -> None:
    assert broker.reachable("redis://127.0.0.1:1/0", timeout=0.2) is False


def test_queue_depths_and_purge(fake: fakeredis.FakeRedis) -> None:
    fake.rpush("t.payment", "m1", "m2")
    assert broker.queue_depths("redis://x", ["t.payment", "t.shipping"]) == {
        "t.payment": 2,
        "t.shipping": 0,
    }
    broker.purge("redis://x", ["t.payment"])
    assert fake.llen("t.payment") == 0
