"""The container tier: the order saga with every process in a container of the project's
own image, through pytest-celery's setup.

- Brokers: pytest-celery's Redis and RabbitMQ broker nodes, on images built here
  (``scripts/docker-images``), one container each for the session. Each test still gets
  its own queue names and its own data directory.
- Workers: one container per service, from the project's Dockerfile (``order-saga``), as
  the nodes of pytest-celery's worker cluster; the test kills and restarts them through it.
- The orchestrator: one more container of the same image.
- The data directory is a directory of the test's own, mounted at ``/data`` in every
  container: the test sets stock and fault plans in it and reads the outcome from it,
  as ``saga`` on the host would.

Where no Docker engine runs, the tier is skipped with the reason (under CI it fails).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import pytest_docker_tools.wrappers.container
from celery import Celery
from docker.models.containers import Container
from docker.models.networks import Network
from pytest_celery import (
    CeleryBackendCluster,
    CeleryBrokerCluster,
    CeleryTestWorker,
    CeleryWorkerCluster,
    CeleryWorkerContainer,
    RabbitMQContainer,
    RabbitMQTestBroker,
    RedisContainer,
    RedisTestBroker,
)
from pytest_celery.api.container import CeleryTestContainer
from pytest_docker_tools import container, network

from order_app import inventory
from saga_core.config import Settings
from saga_core.signing import new_keys
from saga_faults import switch
from tests.conftest import unavailable
from tests.helpers import IDENTITIES, STOCK
from tests.helpers import SERVICES as SERVICE_OBJECTS

# These machines have a /.dockerenv, which makes pytest-docker-tools believe the tests run
# inside a container and send every client to the container's port on localhost: the
# host's own Redis and RabbitMQ. The brokers here are reached through their mapped ports.
pytest_docker_tools.wrappers.container.tests_inside_container = lambda: False

ROOT = Path(__file__).resolve().parents[2]

IMAGE = "order-saga:latest"
#: Every container this tier starts carries it, with the PID of the test run.
LABEL = "org.order-saga.test-run"


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """pytest-docker-tools' client, skipping the tier where no engine runs."""
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        unavailable(f"no Docker engine answers ({exc}); .ci/run installs and starts one")
    return client


@pytest.fixture(scope="session", autouse=True)
def images(docker_client: docker.DockerClient) -> None:
    """The base images and the project's image, built where missing (a run of
    ``scripts/docker-images`` already under way, as ``.ci/run`` starts one, is waited for)."""
    _remove_leftovers(docker_client)
    built = subprocess.run([ROOT / "scripts" / "docker-images"], capture_output=True, text=True)
    if built.returncode != 0:
        unavailable(f"scripts/docker-images failed:\n{built.stdout}{built.stderr}")


def _remove_leftovers(client: docker.DockerClient) -> None:
    """Containers of an earlier run that was killed before it could remove them."""
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        pid = int(c.labels.get(LABEL) or 0)
        if pid != os.getpid() and not _alive(pid):
            c.remove(force=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


LABELS = {LABEL: str(os.getpid())}

saga_network = network(scope="session")


# Brokers: pytest-celery's nodes on the images built here, ports on loopback only.
class Redis(RedisContainer):
    @classmethod
    def image(cls) -> str:
        return "redis:7"

    @classmethod
    def ports(cls) -> dict:
        return {"6379/tcp": ("127.0.0.1",)}


class RabbitMQ(RabbitMQContainer):
    @classmethod
    def image(cls) -> str:
        return "rabbitmq:3-management"

    @classmethod
    def ports(cls) -> dict:
        return {"5672/tcp": ("127.0.0.1",)}


redis_broker_container = container(
    scope="session",
    image=Redis.image(),
    ports=Redis.ports(),
    command=Redis.command(),
    network="{saga_network.name}",
    labels=LABELS,
    wrapper_class=Redis,
    timeout=60,
)

rabbitmq_broker_container = container(
    scope="session",
    image=RabbitMQ.image(),
    ports=RabbitMQ.ports(),
    network="{saga_network.name}",
    labels=LABELS,
    wrapper_class=RabbitMQ,
    timeout=120,
)


@pytest.fixture
def celery_redis_broker(redis_broker_container: Redis) -> RedisTestBroker:
    return RedisTestBroker(redis_broker_container)


@pytest.fixture
def celery_rabbitmq_broker(rabbitmq_broker_container: RabbitMQ) -> RabbitMQTestBroker:
    return RabbitMQTestBroker(rabbitmq_broker_container)


@pytest.fixture
def celery_backend_cluster() -> CeleryBackendCluster | None:
    """No result backend: outcomes travel as messages to the orchestrator."""
    return None


# The system's processes.
class SagaWorker(CeleryWorkerContainer):
    """A service worker of the project's image (``saga worker SERVICE``)."""

    @property
    def ready_prompt(self) -> str:
        return "ready."


class SagaOrchestrator(CeleryTestContainer):
    @property
    def ready_prompt(self) -> str:
        return "orchestrator ready on"


class System:
    """The order saga in containers: settings as seen from the host (for ``orchestrator``
    and ``saga_tools`` calls on the mounted data directory) and from inside, and the
    containers, which the test may kill and restart."""

    def __init__(
        self, host: Settings, workers: dict[str, CeleryTestWorker], orch: SagaOrchestrator
    ):
        self.host, self.workers, self.orchestrator = host, workers, orch

    @property
    def data_dir(self) -> Path:
        return self.host.data_dir

    def logs(self) -> str:
        containers = [w.container for w in self.workers.values()] + [self.orchestrator]
        return "\n".join(f"----- {c.name} -----\n{c.logs()[-4000:]}" for c in containers)


def _host_url(broker: RedisContainer | RabbitMQContainer) -> str:
    """The broker through its port mapped on 127.0.0.1 ("localhost" may be ::1)."""
    if isinstance(broker, RedisContainer):
        return f"redis://127.0.0.1:{broker.port}/0"
    return f"amqp://guest:guest@127.0.0.1:{broker.port}//"


def _wait_ready(containers: list[CeleryTestContainer], timeout: float = 90) -> None:
    """Until each container's log shows it ready, all started at once (in turn, each
    would wait for the one before)."""
    deadline = time.monotonic() + timeout
    waiting = list(containers)
    while waiting:
        waiting = [c for c in waiting if c.ready_prompt not in c.logs()]
        for c in waiting:
            c.reload()
            if c.status == "exited":
                raise RuntimeError(f"{c.name} exited:\n{c.logs()[-3000:]}")
        if waiting and time.monotonic() > deadline:
            names = ", ".join(c.name for c in waiting)
            raise TimeoutError(f"not ready after {timeout:g}s: {names}")
        time.sleep(0.2)  # polling the logs for the ready line, up to the deadline
    for c in containers:
        c.reload()  # pytest-celery's kill() sends nothing to a container it last saw "created"


@pytest.fixture
def system(
    docker_client: docker.DockerClient,
    celery_broker_cluster: CeleryBrokerCluster,
    celery_setup_app: Celery,
    saga_network: Network,
    tmp_path: Path,
) -> Iterator[System]:
    """Four workers and the orchestrator in containers on the test's broker, with stock
    set; removed when the test ends (their logs shown if it failed)."""
    broker = celery_broker_cluster[0].container
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # signed messages, each worker holding only its own service's key
    common = switch.switched(
        Settings(
            queue_prefix=f"c{uuid.uuid4().hex[:8]}-",
            keys=new_keys(IDENTITIES),
            services=tuple(SERVICE_OBJECTS),
        ),
        True,
    )
    host = common.with_(broker_url=_host_url(broker), data_dir=data_dir)
    inside = common.with_(broker_url=broker.url, data_dir=Path("/data"))
    db = inventory.service.database(data_dir)  # the service's own connection: kept open
    for sku, quantity in STOCK.items():
        inventory.set_stock(db, sku, quantity)

    def start(command: list[str], settings: Settings = inside) -> Container:
        return docker_client.containers.run(
            IMAGE,
            command,
            detach=True,
            network=saga_network.name,
            environment={**settings.to_env(), "PYTHONUNBUFFERED": "1"},
            volumes={str(data_dir): {"bind": "/data", "mode": "rw"}},
            # the host's user: what the processes write is the test's to read and remove
            user=f"{os.getuid()}:{os.getgid()}",
            labels=LABELS,
        )

    started: list[Container] = []
    try:
        for service in SERVICE_OBJECTS:
            own = inside.with_(keys={service: inside.keys[service]})
            started.append(start(["saga", "worker", service], own))
        started.append(start(["saga", "orchestrator"]))
        workers = {
            service: CeleryTestWorker(SagaWorker(raw), celery_setup_app)
            for service, raw in zip(SERVICE_OBJECTS, started, strict=False)
        }
        orch = SagaOrchestrator(started[-1])
        _wait_ready([*(w.container for w in workers.values()), orch])
        system = System(host, workers, orch)
        yield system
        print(system.logs())  # shown by pytest only when the test failed
    finally:
        for raw in started:
            raw.remove(force=True)


@pytest.fixture
def celery_worker_cluster(system: System) -> CeleryWorkerCluster:
    """pytest-celery's worker cluster: the system's four service workers."""
    return CeleryWorkerCluster(*system.workers.values())
