"""The compose stack as its README section runs it: up, healthy, an order through the API,
a worker container SIGKILLed and restarted by its policy, every saga ended, a clean audit,
metrics and Flower read from the host, down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from saga_core.processes import wait_for
from saga_tools.redis_server import free_port
from tests.containers.conftest import ROOT, _alive
from tests.helpers import make_order

# Containers start in seconds, but a cold machine builds their images first.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(480)]

#: Compose project names of this tier: the PID of the run that owns it, then a tag.
PROJECT_PREFIX = "sagasmoke"
#: The long-running services: each must report healthy.
LONG_RUNNING = ("redis", "orchestrator", "inventory", "payment", "shipping", "notification")
LONG_RUNNING += ("api", "flower")


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if os.environ.get("CI"):
        pytest.fail("neither docker-compose nor docker compose is installed")
    pytest.skip("neither docker-compose nor docker compose is installed")


class Stack:
    """One compose project of this file, driven by ``command`` (v1 or v2) and ``client``."""

    def __init__(self, project: str, command: list[str], client: docker.DockerClient):
        self.project, self.command, self.docker = project, command, client
        self.ports = {name: free_port() for name in ("api", "metrics", "flower", "rabbitmq_ui")}
        self.env = {
            **os.environ,
            "SAGA_PUBLISH": "127.0.0.1",
            "SAGA_API_PORT": str(self.ports["api"]),
            "SAGA_METRICS_PORT": str(self.ports["metrics"]),
            "SAGA_FLOWER_PORT": str(self.ports["flower"]),
            "SAGA_RABBITMQ_UI_PORT": str(self.ports["rabbitmq_ui"]),
            "SAGA_BROKER_URL": "redis://redis:6379/0",
        }

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*self.command, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project]
        return subprocess.run(
            [*argv, *args], env=self.env, capture_output=True, text=True, check=check, timeout=300
        )

    def container(self, service: str) -> Any:
        found = self.docker.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        assert len(found) == 1, f"{service}: {found}"
        return found[0]

    def health(self, service: str) -> str:
        c = self.container(service)
        return str(c.attrs["State"].get("Health", {}).get("Status", "none"))

    def http(self, port: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports[port]}{path}",
            data=data,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read().decode()
        return json.loads(raw) if raw.startswith(("{", "[")) else raw

    def saga_state(self, saga_id: str) -> str:
        return str(self.http("api", f"/sagas/{saga_id}")["state"])


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
                Stack(project, command, client).compose("down", "-v", check=False)


@pytest.fixture
def stack(docker_client: docker.DockerClient) -> Iterator[Stack]:
    command = compose_command()
    _down_leftovers(command, docker_client)
    stack = Stack(f"{PROJECT_PREFIX}{os.getpid()}x{uuid.uuid4().hex[:6]}", command, docker_client)
    try:
        stack.compose("up", "-d", "--no-build")
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "60", check=False)
        print(logs.stdout[-20000:])  # shown by pytest only when the test failed
        stack.compose("down", "-v", check=False)


def test_the_compose_stack_runs_orders_through_a_worker_crash(stack: Stack) -> None:
    # Every long-running service turns healthy, its check asking what it is for
    wait_for(
        lambda: all(stack.health(s) == "healthy" for s in LONG_RUNNING),
        150,
        "every service to be healthy: " + ", ".join(f"{s} {stack.health(s)}" for s in LONG_RUNNING),
    )
    assert stack.container("stock").attrs["State"]["ExitCode"] == 0
    # An order through the API completes (the shop was stocked by the one-shot service)
    first = stack.http("api", "/orders", make_order("SMOKE-1"))["saga_id"]
    wait_for(lambda: stack.saga_state(first) == "completed", 60, "the first order")
    # A worker's process SIGKILLed from the host: a crash to Docker, which restarts it
    payment = stack.container("payment")
    restarts = payment.attrs["RestartCount"]
    killed_at = time.monotonic()
    os.kill(payment.attrs["State"]["Pid"], signal.SIGKILL)
    after = [stack.http("api", "/orders", make_order(f"SMOKE-{n}"))["saga_id"] for n in (2, 3)]
    wait_for(
        lambda: stack.container("payment").attrs["RestartCount"] > restarts,
        60,
        "compose to restart the payment container",
    )
    for saga_id in after:
        wait_for(lambda s=saga_id: stack.saga_state(s) == "completed", 90, f"saga {saga_id}")
    print(f"orders sent at the kill completed {time.monotonic() - killed_at:.1f}s after it")
    # The audit is clean, and the metrics and Flower answer on the host
    audit = stack.compose("exec", "-T", "orchestrator", "saga", "audit", "--json", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert json.loads(audit.stdout)["ok"] is True
    metrics = stack.http("metrics", "/metrics")
    assert 'saga_sagas_finished_total{state="completed"} 3.0' in metrics
    assert stack.http("flower", "/healthcheck") == "OK"
