"""The compose stack as its README section runs it: up, healthy, an order through the API,
a worker container SIGKILLed while it holds a step and restarted by its policy, every saga
ended, a clean audit, metrics and Flower read from the host, down. On the data volume's
SQLite files, and with the postgres profile (every database in PostgreSQL, two payment
workers on one ledger); each with Compose v2 (``docker compose``) and v1
(``docker-compose``)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from saga_core.processes import wait_for
from saga_tools.redis_server import free_port
from tests.conftest import unavailable
from tests.containers.conftest import ROOT, _alive
from tests.helpers import make_order

# Containers start in seconds, but a cold machine builds their images first.
# one xdist worker runs them all, one after another: one set of broker containers, and the
# compose stacks' host ports taken by one stack at a time
pytestmark = [
    pytest.mark.containers,
    pytest.mark.timeout(480),
    pytest.mark.xdist_group("containers"),
]

#: Compose project names of this tier: the PID of the run that owns it, then a tag.
PROJECT_PREFIX = "sagasmoke"
#: The long-running services: each must report healthy.
LONG_RUNNING = ("redis", "orchestrator", "inventory", "payment", "shipping", "notification")
LONG_RUNNING += ("api", "flower")


#: The two Composes a user may run this file with: v2 (``docker compose``, the Docker CLI's
#: plugin) and v1 (``docker-compose``, the one Debian packages, end-of-life but shipped).
COMPOSES = {"v2": ["docker", "compose"], "v1": ["docker-compose"]}


def compose_command(version: str) -> list[str]:
    command = COMPOSES[version]
    probe = subprocess.run([*command, "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        shown = " ".join(command)
        unavailable(f"Compose {version} ({shown}) is not installed; .ci/run installs it")
    # Debian's v1 answers "docker-compose version 1.29.2", v2 "Docker Compose version v2.40.3"
    found = probe.stdout.split("version", 1)[-1].strip().lstrip("v")
    assert found.startswith(version[1:] + "."), f"{' '.join(command)} is Compose {found}"
    return command


class Stack:
    """One compose project of this file, driven by ``command`` (v1 or v2) and ``client``."""

    def __init__(
        self,
        project: str,
        command: list[str],
        client: docker.DockerClient,
        database_url: str = "",
    ):
        self.project, self.command, self.docker = project, command, client
        self.ports = {name: free_port() for name in ("api", "metrics", "flower", "rabbitmq_ui")}
        self.env = {
            **os.environ,
            "SAGA_PUBLISH": "127.0.0.1",
            "SAGA_API_PORT": str(self.ports["api"]),
            "SAGA_METRICS_PORT": str(self.ports["metrics"]),
            "SAGA_FLOWER_PORT": str(self.ports["flower"]),
            "SAGA_RABBITMQ_UI_PORT": str(self.ports["rabbitmq_ui"]),
            "SAGA_BROKER_URL": "redis://saga:saga@redis:6379/0",
            "SAGA_DATABASE_URL": database_url,
            # fault plans on, for one slow charge: so that the kill lands mid-saga
            "SAGA_FAULTS": "1",
        }

    def compose(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [*self.command, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project]
        return subprocess.run(
            [*argv, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def container(self, service: str) -> Any:
        """The service's container (its first, where it runs several)."""
        return self.containers(service)[0]

    def containers(self, service: str) -> list[Any]:
        found = self.docker.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        assert found, f"no container of {service}"
        return sorted(found, key=lambda c: c.name)

    def health(self, service: str) -> str:
        """``healthy`` where every container of the service is, else the first other word."""
        words = {
            c.attrs["State"].get("Health", {}).get("Status", "none")
            for c in self.containers(service)
        }
        return "healthy" if words == {"healthy"} else str(sorted(words - {"healthy"})[0])

    @functools.cached_property
    def token(self) -> str:
        """The API token the stack made on its first start, read as its header says."""
        cat = ("run", "--rm", "--entrypoint", "cat", "secrets", "/secrets/admin-token")
        return self.compose(*cat).stdout.strip()

    def http(self, port: str, path: str, body: Any = None, token: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if port == "api" and token:
            headers["authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports[port]}{path}", data=data, headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read().decode()
        return json.loads(raw) if raw.startswith(("{", "[")) else raw

    def saga_state(self, saga_id: str) -> str:
        return str(self.http("api", f"/sagas/{saga_id}")["state"])

    def holder(self, saga_id: str, step: str) -> str | None:
        """The worker that reports holding ``step`` of the saga, while it runs."""
        [found] = [s for s in self.http("api", f"/sagas/{saga_id}")["steps"] if s["name"] == step]
        return str(found["held_by"]) if found["state"] == "running" and found["held_by"] else None


def _down_leftovers(command: list[str], client: docker.DockerClient) -> None:
    """Stacks of an earlier run that was killed before it could take them down."""
    projects = {
        c.labels.get("com.docker.compose.project", "")
        for c in client.containers.list(all=True, filters={"label": "com.docker.compose.project"})
    }
    for project in projects:
        if project.startswith(PROJECT_PREFIX):
            pid = int(project[len(PROJECT_PREFIX) :].split("x")[0] or 0)
            if not _alive(pid):
                Stack(project, command, client).compose(
                    "--profile", "postgres", "down", "-v", check=False
                )


#: The postgres profile's database, as the compose file's header says to name it.
POSTGRES_URL = "postgresql://postgres:saga@postgres:5432/postgres"


@pytest.fixture(
    params=[("v2", "sqlite"), ("v2", "postgres"), ("v1", "sqlite"), ("v1", "postgres")],
    ids="-".join,
)
def stack(request: pytest.FixtureRequest, docker_client: docker.DockerClient) -> Iterator[Stack]:
    version, database = request.param
    command = compose_command(version)
    _down_leftovers(command, docker_client)
    on_postgres = database == "postgres"
    project = f"{PROJECT_PREFIX}{os.getpid()}x{uuid.uuid4().hex[:6]}"
    stack = Stack(project, command, docker_client, POSTGRES_URL if on_postgres else "")
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
