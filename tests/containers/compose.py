"""Compose projects of this tier: the compose file run as a user runs it, with Compose v2
(``docker compose``) or v1 (``docker-compose``), on ports of its own, read from the host."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import urllib.request
import uuid
from typing import Any

import docker

from saga_tools.redis_server import free_port
from tests.conftest import unavailable
from tests.containers.conftest import ROOT, _alive

#: Compose project names of this tier: the PID of the run that owns it, then a tag.
PROJECT_PREFIX = "sagasmoke"
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
                    "--profile", "postgres", "--profile", "cluster", "down", "-v", check=False
                )


def new_stack(version: str, client: docker.DockerClient, database_url: str = "") -> Stack:
    """A compose project of this run's own on Compose ``version``, named as
    :func:`_down_leftovers` reads the names (after taking down those of runs that died)."""
    command = compose_command(version)
    _down_leftovers(command, client)
    project = f"{PROJECT_PREFIX}{os.getpid()}x{uuid.uuid4().hex[:6]}"
    return Stack(project, command, client, database_url)
