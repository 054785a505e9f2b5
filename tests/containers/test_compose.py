"""The compose stack as its README section runs it: up, healthy, an order through the API,
a worker container SIGKILLed while it holds a step and restarted by its policy, every saga
ended, a clean audit, metrics and Flower read from the host, down. On the data volume's
SQLite files, and with the postgres profile (every database in PostgreSQL, two payment
workers on one ledger); each with Compose v2 (``docker compose``) and v1
(``docker-compose``)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import docker
import pytest

from saga_core.processes import wait_for
from tests.containers.compose import Stack, new_stack
from tests.helpers import make_order

# Containers start in seconds, but a cold machine builds their images first.
# one xdist worker runs them all, one after another: one set of broker containers, and the
# compose stacks' host ports taken by one stack at a time
pytestmark = [
    pytest.mark.containers,
    pytest.mark.timeout(480),
    pytest.mark.xdist_group("containers"),
]

#: The long-running services: each must report healthy.
LONG_RUNNING = ("redis", "orchestrator", "inventory", "payment", "shipping", "notification")
LONG_RUNNING += ("api", "flower")


#: The postgres profile's database, as the compose file's header says to name it.
POSTGRES_URL = "postgresql://postgres:saga@postgres:5432/postgres"


@pytest.fixture(
    params=[("v2", "sqlite"), ("v2", "postgres"), ("v1", "sqlite"), ("v1", "postgres")],
    ids="-".join,
)
def stack(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Iterator[Stack]:
    version, database = request.param
    on_postgres = database == "postgres"
    stack = new_stack(version, docker_client, POSTGRES_URL if on_postgres else "")
    try:
        if on_postgres:
            stack.compose("--profile", "postgres", "up", "-d", "--no-build", "--scale", "payment=2")
        else:
            stack.compose("up", "-d", "--no-build")
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "60", check=False)
        print(logs.stdout[-20000:])  # shown by pytest only when the test failed
        stack.compose("--profile", "postgres", "down", "-v", check=False)


def test_the_compose_stack_runs_orders_through_a_worker_crash(stack: Stack) -> None:
    # Every long-running service turns healthy, its check asking what it is for
    long_running = LONG_RUNNING + (("postgres",) if stack.env["SAGA_DATABASE_URL"] else ())
    wait_for(
        lambda: all(stack.health(s) == "healthy" for s in long_running),
        150,
        "every service to be healthy: " + ", ".join(f"{s} {stack.health(s)}" for s in long_running),
    )
    assert stack.container("stock").attrs["State"]["ExitCode"] == 0
    # Who may do what: the API wants the stack's token, Redis its user, messages are signed
    with pytest.raises(urllib.error.HTTPError) as refused:
        stack.http("api", "/orders", make_order("SMOKE-0"), token=False)
    assert refused.value.code == 401
    anonymous = stack.compose("exec", "-T", "redis", "redis-cli", "lpush", "orchestrator", "x")
    assert "NOPERM" in anonymous.stdout + anonymous.stderr
    started = stack.compose("logs", "--no-color", "orchestrator", "payment").stdout
    assert "orchestrator: messages signed and checked" in started
    assert "worker for payment: messages signed and checked" in started
    # An order through the API completes (the shop was stocked by the one-shot service)
    first = stack.http("api", "/orders", make_order("SMOKE-1"))["saga_id"]
    wait_for(lambda: stack.saga_state(first) == "completed", 60, "the first order")
    # A worker's process SIGKILLed from the host mid-saga, a crash to Docker, which restarts
    # it: the payment container that holds a charge under way (slow, by a fault plan)
    plan = json.dumps({"charge_payment": {"delay_seconds": 5}})
    stack.compose("exec", "-T", "orchestrator", "saga", "faults", "SMOKE-2", "-", stdin=plan)
    slow = stack.http("api", "/orders", make_order("SMOKE-2"))["saga_id"]
    held_by = wait_for(lambda: stack.holder(slow, "charge_payment"), 60, "the charge to be held")
    host = held_by.partition(" pid ")[0].rpartition("@")[2]  # "NAME@HOST pid PID"
    [payment] = [c for c in stack.containers("payment") if c.attrs["Config"]["Hostname"] == host]
    restarts = payment.attrs["RestartCount"]
    killed_at = time.monotonic()
    os.kill(payment.attrs["State"]["Pid"], signal.SIGKILL)
    after = [stack.http("api", "/orders", make_order(f"SMOKE-{n}"))["saga_id"] for n in (3, 4)]
    wait_for(
        lambda: stack.docker.containers.get(payment.id).attrs["RestartCount"] > restarts,
        60,
        "compose to restart the payment container",
    )
    for saga_id in [slow, *after]:
        wait_for(lambda s=saga_id: stack.saga_state(s) == "completed", 90, f"saga {saga_id}")
    print(f"orders in flight at the kill completed {time.monotonic() - killed_at:.1f}s after it")
    # The audit is clean, and the metrics and Flower answer on the host
    audit = stack.compose("exec", "-T", "orchestrator", "saga", "audit", "--json", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert json.loads(audit.stdout)["ok"] is True
    metrics = stack.http("metrics", "/metrics")
    assert 'saga_sagas_finished_total{saga="order",state="completed"} 4.0' in metrics
    assert stack.http("flower", "/healthcheck") == "OK"
