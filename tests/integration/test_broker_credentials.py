"""A broker with credentials: the whole system on a Redis whose default user may only
PING, every process logging in as an ACL user of its own with a password."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from saga_store import SagaState
from saga_tools import redis_server
from tests.helpers import ONE_OF_EACH, make_order, service_records
from tests.integration.conftest import System

pytestmark = pytest.mark.processes

#: The system's user: every key and channel, every command but the server's administration
#: (CONFIG, SHUTDOWN, FLUSHALL, DEBUG, KEYS and the like). Anyone else may only PING.
ACL = ["~*", "&*", "+@all", "-@admin", "-@dangerous"]


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A redis-server of the test's own with an ACL: (its URL as the system's user, the
    same without a password)."""
    password = secrets.token_hex(16)
    server = redis_server.OwnedRedis(tmp_path / "redis.pid")
    url = server.start(
        args=[
            *("--user", "default", "on", "nopass", "-@all", "+ping"),
            *("--user", "saga", "on", f">{password}", *ACL),
        ]
    )
    yield url.replace("redis://", f"redis://saga:{password}@"), url
    server.stop()


def test_the_system_runs_on_a_redis_with_an_acl_user_and_a_password(
    redis_only: None, locked_redis: tuple[str, str], make_system: Callable[..., System]
) -> None:
    with_password, anonymous = locked_redis
    # Given a Redis that refuses the anonymous and the administrative
    client = redis.Redis.from_url(anonymous)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.lpush("orchestrator", "x")
    system_client = redis.Redis.from_url(with_password)
    with pytest.raises(redis.exceptions.NoPermissionError):
        system_client.config_get("requirepass")
    with pytest.raises(redis.exceptions.NoPermissionError):
        system_client.flushall()
    # When the system runs on it, as its ACL user
    system = make_system(broker_url=with_password)
    saga_id = system.submit(make_order("C-1"))
    # Then the order goes through every service, and a declined one is undone
    assert system.wait(saga_id).state is SagaState.COMPLETED
    assert service_records(system.data_dir, "C-1") == ONE_OF_EACH
    declined = system.submit(make_order("C-2", card_number="4000000000000002"))
    assert system.wait(declined).state is SagaState.COMPENSATED
    # and no process logged the password
    assert with_password.split("@")[0].split(":")[-1] not in system.logs()


@pytest.mark.parametrize(
    ("who", "said"),
    [
        ("a wrong password", "invalid username-password pair"),
        ("no user", "the broker refused this process"),
    ],
)
def test_a_process_the_broker_refuses_says_so(
    redis_only: None, locked_redis: tuple[str, str], who: str, said: str
) -> None:
    with_password, anonymous = locked_redis
    url = with_password.replace("saga:", "saga:x") if who == "a wrong password" else anonymous
    done = subprocess.run(
        [sys.executable, "-m", "saga_tools.cli", "ping", "orchestrator", "--timeout", "3"],
        env={**os.environ, "SAGA_BROKER_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("saga: ") and said in done.stderr
