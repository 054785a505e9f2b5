"""Poison on every queue of a running system: each kind of message a reader must refuse
(not JSON, nested deep, oversized, numbers out of range, NaN, text that is not Unicode,
wrong types, unknown tasks, and on Redis envelopes kombu cannot read) is dead-lettered
where it lands, and nothing stops: the same processes run on, good orders complete, and
the audit is clean."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from saga_core import broker
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.dead_letters import QUEUE, DeadLetters
from saga_core.messages import HEARTBEAT_TASK, OUTCOME_TASK, SUBMIT_TASK
from saga_core.processes import descendants, wait_for
from saga_store import SagaState
from saga_tools import audit
from saga_tools.redis_server import free_port
from tests import poison
from tests.helpers import SERVICES as SERVICE_DEFINITIONS
from tests.helpers import make_order
from tests.integration.conftest import System
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.processes


def processes(system: System) -> set[int]:
    """Every process of the system: a supervised worker's, a prefork worker's pool."""
    return {p for child in system.children for p in (child.pid, *descendants(child.pid))}


def targets(system: System) -> list[tuple[str, str]]:
    """Every queue the system reads, with the tasks it serves: the orchestrator's outcomes,
    heartbeats and submissions, and an operation of each service."""
    orchestrator = system.settings.queue(ORCHESTRATOR_QUEUE)
    found = [(orchestrator, task) for task in (OUTCOME_TASK, HEARTBEAT_TASK, SUBMIT_TASK)]
    for service in SERVICE_DEFINITIONS:
        operation = next(iter(SERVICE_DEFINITIONS[service].operations))
        found.append((system.settings.queue(service), operation))
    return found


@pytest.mark.parametrize("signed", [True, False], ids=["keys", "no_keys"])
def test_poison_on_every_queue_stops_nothing(
    make_system: Callable[..., System], signed: bool
) -> None:
    changes = {} if signed else {"keys": {}}
    port = free_port()
    system = make_system(orchestrator_args=("--metrics-port", str(port)), **changes)
    system.wait_ready()
    url = system.settings.broker_url
    before = processes(system)
    dead = DeadLetters(url, system.settings.queue(QUEUE))
    dead.purge()

    # Given an order under way
    first = system.submit(make_order("P-1"))
    # When every kind of poison lands on every queue the system reads
    sent = poison.spread(url, targets(system), redis_only=not broker.is_amqp(url))()
    # and another order comes after it
    second = system.submit(make_order("P-2"))

    # Then both orders complete
    assert system.wait(first).state is SagaState.COMPLETED, system.logs()
    assert system.wait(second).state is SagaState.COMPLETED, system.logs()
    # every poisoned message is kept as a dead letter, with why
    wait_for(lambda: len(dead.list(1000)) >= sent, 30, f"{sent} dead letters")
    letters = dead.list(1000)
    assert len(letters) == sent, [(d.queue, d.reason) for d in letters]
    assert {d.queue for d in letters} == {queue for queue, _ in targets(system)}
    assert all(d.reason for d in letters)
    # and counted: the dead letters kept, and the refusals of the orchestrator and of the
    # workers (theirs come with their heartbeats)
    orchestrators = sum(1 for d in letters if d.queue == system.settings.queue(ORCHESTRATOR_QUEUE))

    def counted() -> bool:
        m = scrape(port)
        refused = sum(v for (name, _), v in m.items() if name == "saga_messages_refused_total")
        by_workers = sum(
            v for (name, _), v in m.items() if name == "saga_worker_messages_refused_total"
        )
        return (
            m.get(("saga_dead_letters", frozenset()), 0) == sent
            and refused == orchestrators
            and by_workers == sent - orchestrators
        )

    wait_for(counted, 30, "the refusals to be counted")
    # the processes that were running are the ones running now, none restarted
    assert processes(system) == before, system.logs()
    assert all(child.alive() for child in system.children)
    # nothing in the logs gives a body away, and the audit is clean
    assert "x" * 1000 not in system.logs()
    assert audit.audit(system.settings).ok


def test_dead_letters_are_listed_and_purged(settings: Settings) -> None:
    dead = DeadLetters(settings.broker_url, settings.queue(QUEUE))
    dead.put("payment", "not JSON", b"\xff" * 10)
    dead.put("orchestrator", "too deep", b"[" * 100)
    listed = dead.list()
    assert [(d.queue, d.reason, d.size) for d in listed] == [
        ("orchestrator", "too deep", 100),
        ("payment", "not JSON", 10),
    ]
    assert listed[0].by.endswith(f":{os.getpid()}")
    # listing leaves them in place; purging empties the place
    assert len(dead.list()) == 2
    assert dead.purge() == 2
    assert dead.list() == []


def test_on_quorum_queues_the_dead_letters_are_a_quorum_queue(
    settings: Settings, rabbitmq_only: None
) -> None:
    import amqp.exceptions

    from saga_core import broker, dead_letters

    dead = dead_letters.for_system(settings.with_(quorum_queues=True))
    dead.put("payment", "not JSON", b"{x")
    assert [d.reason for d in dead.list()] == ["not JSON"]
    # the broker holds it as a quorum queue: declaring it classic is refused
    with broker.amqp_connection(settings.broker_url) as connection:
        channel = connection.channel()
        with pytest.raises(amqp.exceptions.PreconditionFailed, match="x-queue-type"):
            dead_letters.amqp_queue(dead.name)(channel).declare()
    dead.close()
    broker.discard(settings.broker_url, [dead.name])
