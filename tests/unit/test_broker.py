"""The code that talks to Redis directly, against fakeredis."""

from __future__ import annotations

import ssl
from typing import Any

import fakeredis
import pytest

from saga_core import broker, config
from saga_core.celery_app import celery_config
from saga_core.config import Settings
from saga_core.errors import ConfigError


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


@pytest.mark.parametrize(
    ("url", "celery_url", "options"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", None),
        (
            "rediss://saga:pw@redis.example:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://saga:pw@redis.example:6380/0",
            {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"},
        ),
        (
            "amqps://saga:pw@mq.example:5671/saga?ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
            "&ssl_cert_reqs=required&heartbeat=10",
            "amqps://saga:pw@mq.example:5671/saga?heartbeat=10",
            {"cert_reqs": ssl.CERT_REQUIRED, "certfile": "/c.pem", "keyfile": "/k.pem"},
        ),
    ],
)
def test_a_tls_urls_options_reach_celery_in_the_shape_its_transport_takes(
    url: str, celery_url: str, options: dict[str, Any] | None
) -> None:
    conf = celery_config(Settings(broker_url=url))
    assert conf["broker_url"] == celery_url
    assert conf.get("broker_use_ssl") == options


def test_a_bad_tls_option_is_refused_at_start_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"SAGA_BROKER_URL: .*ssl_cert_reqs must be one of"):
        config.load({"SAGA_BROKER_URL": "rediss://h:6380/0?ssl_cert_reqs=maybe"})
