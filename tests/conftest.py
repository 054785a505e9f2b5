"""Fixtures shared by every tier.

Each test gets its own data directory and its own queue names (a unique prefix), so two
runs at once on one broker do not interfere. Every test that needs a broker runs twice: on
the Redis at SAGA_BROKER_URL (or a redis-server this session starts and stops), and on the
RabbitMQ at SAGA_TEST_AMQP_URL. A service or tool a tier needs that cannot be had skips
that tier, with the reason shown, except under CI (``CI`` set, as ``.ci/run`` exports it),
where it fails: a run in CI never passes on what it did not check.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

# pytest-celery 1.x replaces celery_worker with a Docker-based fixture; this machine has
# no Docker engine, so take Celery's own in-process worker fixture back.
from celery.contrib.pytest import celery_worker  # noqa: F401

from order_app import app as ORDER_APP
from saga_core import broker, config, dead_letters
from saga_core.config import Settings
from saga_core.database import Location, unreachable
from saga_core.errors import ConfigError
from saga_core.signing import CLIENT, new_keys
from saga_faults import switch
from saga_tools import redis_server

# Its assertions explain themselves too (it is imported by the tests, after this).
pytest.register_assert_rewrite("tests.helpers")

CI = bool(os.environ.get("CI"))
#: Who signs in the built-in app every test system runs: each service, and the clients.
IDENTITIES = (*ORDER_APP.service_names, CLIENT)


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Each test leaves the root logger's level as it found it: Celery's in-process test worker
    sets it to ERROR, which would hide the WARNINGs a later test looks for in caplog,
    depending on which tests ran before it in the same process."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def unavailable(reason: str) -> NoReturn:
    """What a test needs cannot be had: skipped, but under CI a failure."""
    if CI:
        pytest.fail(f"{reason} (and CI is set: nothing may be skipped for want of it)")
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``any_broker`` checks something the broker does not change (input
    validation, a web page): it runs on Redis only, which keeps the suite's time down."""
    dropped = [
        item
        for item in items
        if item.get_closest_marker("any_broker") and "[rabbitmq" in item.nodeid
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
    # pytest-celery parametrizes its broker fixtures in an order that differs from one
    # process to another; pytest-xdist needs every worker to collect the same list
    within = [i for i, item in enumerate(items) if "[celery_" in item.nodeid]
    ordered = sorted((items[i] for i in within), key=lambda t: t.nodeid)
    for i, item in zip(within, ordered, strict=True):
        items[i] = item


#: The RabbitMQ the integration tier also runs on (.ci/run starts it where it is installed).
AMQP_URL = os.environ.get("SAGA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(scope="session", params=["redis", "rabbitmq"])
def broker_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Each test that needs a broker runs on Redis, then on RabbitMQ."""
    if request.param == "rabbitmq":
        if not broker.reachable(AMQP_URL, timeout=3):
            unavailable(f"no RabbitMQ answers at {AMQP_URL} (SAGA_TEST_AMQP_URL)")
        yield AMQP_URL
        return
    url = config.load().broker_url
    if broker.is_amqp(url):
        url = "redis://127.0.0.1:6379/0"
    try:
        url, owned = redis_server.ensure(url, tmp_path_factory.mktemp("broker"))
    except ConfigError as exc:
        unavailable(f"no Redis broker for these tests: {exc}")
    yield url
    if owned is not None:
        owned.stop()


@pytest.fixture
def redis_only(broker_url: str) -> None:
    """For a test of something only Redis has (its restart losing every message, kombu's
    Redis transport, the benchmark's Redis reader)."""
    if broker.is_amqp(broker_url):
        pytest.skip("Redis only")


@pytest.fixture
def rabbitmq_only(broker_url: str) -> None:
    """For a test of something only RabbitMQ has (quorum queues)."""
    if not broker.is_amqp(broker_url):
        pytest.skip("RabbitMQ only")


@pytest.fixture
def settings(broker_url: str, tmp_path: Path) -> Iterator[Settings]:
    s = Settings(
        broker_url=broker_url,
        data_dir=tmp_path / "data",
        queue_prefix=f"test-{uuid.uuid4().hex[:10]}.",
        step_timeout=20.0,
        sweep_interval=0.2,
        stall_timeout=4.0,
        # Signed messages, as the demo runs them: keys of the test's own.
        keys=new_keys(IDENTITIES),
        services=ORDER_APP.service_names,
    )
    # The tests inject faults on purpose: in the processes they start, and only there.
    s = switch.switched(s, True)
    yield s
    broker.discard(broker_url, [*s.all_queues(), s.queue(dead_letters.QUEUE)])


#: The PostgreSQL the store's and the services' tests also run on (.ci/run starts it).
POSTGRES_URL = os.environ.get(
    "SAGA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL at SAGA_TEST_POSTGRES_URL; tests that need it are skipped (with the
    reason) where none answers, except under CI, where they fail."""
    why_not = unreachable(POSTGRES_URL)
    if why_not:
        unavailable(f"{why_not} (SAGA_TEST_POSTGRES_URL)")
    return POSTGRES_URL


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL schema of the test's own, dropped after."""
    import psycopg

    name = f"saga_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """Where a test's saga store lives: each such test runs on SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        return Location(f"sqlite:///{tmp_path / 'sagas.db'}")
    return Location(request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema"))


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of the test's own (its URL), dropped after: for a whole
    system, whose store and services each take a schema in it."""
    from saga_core import postgres

    url = postgres.create_database(postgres_url, f"saga_test_{uuid.uuid4().hex[:12]}")
    yield url
    postgres.drop_database(url)
