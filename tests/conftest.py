"""Fixtures shared by every tier.

Each test gets its own data directory and its own queue names (a unique prefix), so two
runs at once on one Redis do not interfere. The broker is the Redis at SAGA_BROKER_URL, or a
redis-server this session starts and stops; where none can be had the tests that need one
are skipped, except under CI, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest-celery 1.x replaces celery_worker with a Docker-based fixture; this machine has
# no Docker engine, so take Celery's own in-process worker fixture back.
from celery.contrib.pytest import celery_worker  # noqa: F401

from saga import broker, config
from saga.config import Settings
from saga.errors import ConfigError

CI = bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = config.load().broker_url
    try:
        url, owned = broker.ensure(url, tmp_path_factory.mktemp("broker"))
    except ConfigError as exc:
        if CI:
            raise
        pytest.skip(f"no Redis broker for these tests: {exc}")
    yield url
    if owned is not None:
        owned.stop()


@pytest.fixture
def settings(broker_url: str, tmp_path: Path) -> Iterator[Settings]:
    s = Settings(
        broker_url=broker_url,
        data_dir=tmp_path / "data",
        queue_prefix=f"test-{uuid.uuid4().hex[:10]}.",
        step_timeout=20.0,
        sweep_interval=0.2,
        stall_timeout=4.0,
    )
    yield s
    broker.purge(broker_url, s.all_queues())
