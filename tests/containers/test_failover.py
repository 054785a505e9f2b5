"""Beyond one machine, in containers: the compose file's cluster profile, as docs/scaling.md
runs it. RabbitMQ on three nodes with quorum queues and PostgreSQL as a primary with a
synchronous standby; every process (the orchestrator, the four workers, the API) given
every node (kombu's ``;``-separated failover URLs, a libpq multi-host URL with
``target_session_attrs=read-write``). The nodes share the queues' leaders
(``queue_leader_locator = balanced``): each leads some. Under a steady load of orders
through the API:

- the RabbitMQ node that leads the orchestrator's queue is SIGKILLed, then started again;
  then the node that leads a service queue (payment's), likewise;
- the PostgreSQL standby is SIGKILLed, held down until an order has waited for it in
  vain, and started again;
- the PostgreSQL primary is SIGKILLed and the standby promoted.

Every order the API acknowledged ends completed (synchronous commit: nothing acknowledged
is lost with the primary), each once (the audit, from the store and every ledger, is
clean); none is acknowledged while the standby is away (the primary's commits wait for it).
Printed, for docs/scaling.md: the orders in flight at each loss, and the time from the loss
(or the standby's return) to the first completed saga of an order placed after it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from saga_core.processes import wait_for
from tests.containers.compose import Stack, new_stack
from tests.helpers import make_order

pytestmark = [
    pytest.mark.containers,
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("containers"),
]

NODES = ("rmq1", "rmq2", "rmq3")
BROKER_URL = ";".join(f"amqp://saga:saga@{node}:5672/saga" for node in NODES)
DATABASE_URL = (
    "postgresql://postgres:saga@pg1,pg2/postgres?target_session_attrs=read-write&connect_timeout=3"
)
SYSTEM = ("orchestrator", "inventory", "payment", "shipping", "notification", "api")
TERMINAL = {"completed", "compensated", "failed"}


class Load:
    """Orders through the API from a thread, ``per_second``; one the API did not acknowledge
    (an error, no answer in time) is placed again with the same order id until it is: the
    same order id never starts a second saga."""

    def __init__(self, stack: Stack, per_second: float = 4.0):
        self.stack, self.interval = stack, 1.0 / per_second
        self.acknowledged: dict[str, float] = {}  # saga id: when the API acknowledged it
        self.refused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            order_id = f"F-{n}"
            while not self._stop.is_set():
                try:
                    saga_id = self.stack.http("api", "/orders", make_order(order_id))["saga_id"]
                except (urllib.error.URLError, OSError):
                    self.refused += 1
                    self._stop.wait(self.interval)  # the pace of the load, not a wait
                    continue
                with self._lock:
                    self.acknowledged[saga_id] = time.monotonic()
                break
            n += 1
            self._stop.wait(self.interval)  # the pace of the load

    def since(self, moment: float) -> list[str]:
        return self.between(moment, float("inf"))

    def between(self, start: float, end: float) -> list[str]:
        with self._lock:
            return [s for s, at in self.acknowledged.items() if start < at < end]

    def all(self) -> list[str]:
        with self._lock:
            return list(self.acknowledged)


def state(stack: Stack, saga_id: str) -> str | None:
    """The saga's state, or None while the API cannot say (its store failing over)."""
    try:
        return stack.saga_state(saga_id)
    except (urllib.error.URLError, OSError):
        return None


def in_flight(stack: Stack) -> int:
    return sum(
        len(stack.http("api", f"/sagas?state={s}&limit=500")["sagas"])
        for s in ("pending", "running", "compensating")
    )


def recovery(stack: Stack, load: Load, lost_at: float, what: str) -> float:
    """Seconds from ``lost_at`` to the first completed saga of an order placed after it."""

    def completed_after() -> float | None:
        for saga_id in load.since(lost_at):
            if state(stack, saga_id) == "completed":
                return time.monotonic() - lost_at
        return None

    seconds = float(wait_for(completed_after, 180, f"a saga placed after {what} to complete"))
    placed = len(load.since(lost_at))
    print(f"{what}: the next saga completed {seconds:.1f}s after it; {placed} orders placed since")
    return seconds


def rabbitmq(stack: Stack, node: str, *args: str) -> Any:
    answer = stack.compose("exec", "-T", node, "rabbitmqctl", *args, "--formatter", "json")
    return json.loads(answer.stdout)


def running_nodes(stack: Stack, asked: str) -> int:
    try:
        return len(rabbitmq(stack, asked, "cluster_status")["running_nodes"])
    except Exception:  # that node is still starting
        return 0


def leaders(stack: Stack, asked: str = "rmq1") -> dict[str, str]:
    """Each quorum queue's leader (a node's service name), as node ``asked`` tells it; a
    classic queue has none."""
    queues = rabbitmq(stack, asked, "list_queues", "-p", "saga", "name", "leader")
    return {q["name"]: str(q["leader"]).partition("@")[2] for q in queues if q["leader"]}


def lose_a_node(stack: Stack, load: Load, queue: str, figures: dict[str, Any]) -> None:
    """SIGKILL the node that leads ``queue``, see the system go on, start it again."""
    live = next(n for n in NODES if running_nodes(stack, n) == len(NODES))
    node = leaders(stack, live)[queue]
    figures[f"in_flight_{queue}_leader"] = in_flight(stack)
    lost_at = time.monotonic()
    stack.container(node).kill()
    figures[f"{queue}_leader_lost_s"] = recovery(stack, load, lost_at, f"{node} ({queue}) lost")
    stack.container(node).start()
    other = next(n for n in NODES if n != node)
    wait_for(lambda: running_nodes(stack, other) == len(NODES), 120, f"{node} to rejoin")


def lose_the_standby(stack: Stack, load: Load, figures: dict[str, Any]) -> None:
    """SIGKILL the synchronous standby and keep it down until a try of the load's went
    unanswered: the primary's commits wait for the standby, so no order is acknowledged that
    one server alone holds. Started again, it catches up and everything goes on."""
    figures["in_flight_standby"] = in_flight(stack)
    refused = load.refused
    lost_at = time.monotonic()
    stack.container("pg2").kill()
    wait_for(lambda: load.refused > refused, 60, "an order to wait in vain for the standby")
    # reads commit nothing, so they do not wait
    figures["in_flight_while_standby_down"] = in_flight(stack)
    back_at = time.monotonic()
    stack.container("pg2").start()
    # a second for an answer already on its way when the standby went
    assert load.between(lost_at + 1, back_at) == []
    figures["standby_down_s"] = back_at - lost_at
    figures["standby_back_s"] = recovery(stack, load, back_at, "the standby back")
    wait_for(lambda: replication(stack) == "streaming sync", 120, "the standby to stream again")


@pytest.fixture
def cluster(docker_client: docker.DockerClient) -> Iterator[Stack]:
    stack = new_stack("v2", docker_client, DATABASE_URL)
    stack.env.update(
        SAGA_BROKER_URL=BROKER_URL,
        SAGA_QUORUM_QUEUES="1",
        SAGA_FAULTS="0",
        SAGA_TASK_EVENTS="0",
    )
    try:
        # the nodes first: a quorum queue is replicated on the nodes there when declared
        stack.compose("--profile", "cluster", "up", "-d", "--no-build", *NODES, "pg1", "pg2")
        wait_for(lambda: running_nodes(stack, "rmq1") == len(NODES), 120, "the RabbitMQ cluster")
        wait_for(lambda: replication(stack) == "streaming sync", 120, "the standby to stream")
        stack.compose("--profile", "cluster", "up", "-d", "--no-build")
        wait_for(
            lambda: all(stack.health(s) == "healthy" for s in SYSTEM),
            150,
            "the system to be healthy",
        )
        # enough for every order of the run (the stack seeds a hundred)
        stack.compose("exec", "-T", "orchestrator", "saga", "stock", "set", "WIDGET", "1000000")
        yield stack
    finally:
        logs = stack.compose(
            "--profile", "cluster", "logs", "--no-color", "--tail", "80", check=False
        )
        print(logs.stdout[-30000:])  # shown by pytest only when the test failed
        stack.compose("--profile", "cluster", "down", "-v", check=False)


def replication(stack: Stack) -> str:
    answer = stack.compose(
        "exec",
        "-T",
        "pg1",
        "psql",
        "-U",
        "postgres",
        "-Atc",
        "SELECT state || ' ' || sync_state FROM pg_stat_replication",
        check=False,
    )
    return answer.stdout.strip()


def test_a_broker_node_and_the_database_primary_fail_over_under_load(cluster: Stack) -> None:
    stack, figures = cluster, {}
    # the queues' leaders shared among the nodes (queue_leader_locator), not all on one
    placed = leaders(stack)
    figures["queues_led"] = {n: list(placed.values()).count(n) for n in NODES}
    assert all(figures["queues_led"].values()), placed
    with Load(stack) as load:
        wait_for(lambda: len(load.all()) >= 10, 60, "the load to start")
        # The broker: the node that leads the orchestrator's queue, then a service queue's
        lose_a_node(stack, load, "orchestrator", figures)
        lose_a_node(stack, load, "payment", figures)
        # The database: the synchronous standby lost, then back
        lose_the_standby(stack, load, figures)
        # The database: the primary lost, the standby promoted (docs/scaling.md)
        figures["in_flight_primary"] = in_flight(stack)
        lost_at = time.monotonic()
        stack.container("pg1").kill()
        stack.compose("exec", "-T", "pg2", "psql", "-U", "postgres", "-c", "SELECT pg_promote()")
        figures["primary_lost_s"] = recovery(stack, load, lost_at, "the primary lost")
        wait_for(lambda: len(load.since(lost_at)) >= 10, 60, "more orders after the failover")
    acknowledged = load.all()
    # Every acknowledged order ends completed: nothing acknowledged was lost
    wait_for(
        lambda: all(state(stack, s) in TERMINAL for s in acknowledged),
        180,
        "every acknowledged saga to end",
    )
    ended = {s: state(stack, s) for s in acknowledged}
    assert set(ended.values()) == {"completed"}, ended
    audit = stack.compose("exec", "-T", "orchestrator", "saga", "audit", "--json", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert json.loads(audit.stdout)["ok"] is True
    figures.update(orders=len(acknowledged), unacknowledged_tries=load.refused)
    print("failover figures:", json.dumps(figures))
