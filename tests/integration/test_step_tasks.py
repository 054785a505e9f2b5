"""The service tasks in Celery's in-process test worker (pytest-celery's
``celery.contrib.pytest`` fixtures) on the real Redis broker: replies, retries, refusals."""

from __future__ import annotations

import queue
from typing import Any

import pytest
from celery import Celery

from order_app import inventory
from saga_core.celery_app import celery_config as saga_celery_config
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.messages import OUTCOME_TASK, Command, Outcome, Phase, Status
from saga_core.retry import RetryPolicy
from saga_faults.middleware import Faults
from saga_faults.plans import FaultPlans
from tests.helpers import SERVICES as SERVICE_OBJECTS
from tests.helpers import service_records, signed
from workers import task

CHARGE = {
    "reference": "T-1",
    "card": {"token": "tok_visa", "last4": "4242"},
    "amount_cents": 1000,
    "currency": "EUR",
}
FAST = RetryPolicy(max_retries=2, backoff_base=0.05, backoff_max=0.1)


@pytest.fixture
def celery_config(settings: Settings) -> dict[str, Any]:
    return saga_celery_config(settings)


@pytest.fixture
def celery_worker_parameters(settings: Settings) -> dict[str, Any]:
    return {
        "queues": [settings.queue(q) for q in (*SERVICE_OBJECTS, ORCHESTRATOR_QUEUE)],
        "perform_ping_check": False,  # the ping needs a result backend; we keep none
    }


@pytest.fixture
def outcomes(celery_app: Celery, settings: Settings) -> queue.Queue[Outcome]:
    """Registers the service tasks (with fault injection), and an outcome task that hands
    outcomes to the test, read through the message contract."""
    received: queue.Queue[Outcome] = queue.Queue()
    for service in SERVICE_OBJECTS.values():
        task.register(celery_app, settings, service, settings.keyring(), [Faults(settings)])

    def outcome(body: Any) -> None:
        received.put(Outcome.from_wire(body))

    celery_app.task(name=OUTCOME_TASK)(outcome)
    inventory.set_stock(inventory.service.database(settings.data_dir), "WIDGET", 5)
    return received


def send(
    app: Celery,
    settings: Settings,
    name: str,
    queue_name: str,
    saga_id: str,
    payload: dict[str, Any],
    retry: RetryPolicy = FAST,
) -> None:
    command = Command(name, saga_id, name, Phase.ACTION, 1, payload, retry)
    wire = signed(settings, command.kind, command.to_wire(), queue_name)
    app.send_task(name, args=[wire], queue=settings.queue(queue_name))


def test_step_replies_on_the_orchestrator_queue(
    outcomes, celery_worker, celery_app, settings: Settings
) -> None:
    send(
        celery_app,
        settings,
        "reserve_inventory",
        "inventory",
        "k1",
        {"reference": "T-1", "items": [{"sku": "WIDGET", "quantity": 2}]},
    )
    outcome = outcomes.get(timeout=20)
    assert outcome.status is Status.SUCCEEDED
    assert outcome.output["reservation_id"].startswith("res_")
    assert (outcome.saga_id, outcome.step, outcome.tries) == ("k1", "reserve_inventory", 1)


def test_transient_failures_are_retried_then_succeed(
    outcomes, celery_worker, celery_app, settings: Settings
) -> None:
    FaultPlans(settings.data_dir).add("T-1", {"charge_payment": {"fail_transient": 2}})
    send(
        celery_app,
        settings,
        "charge_payment",
        "payment",
        "k2",
        CHARGE,
    )
    outcome = outcomes.get(timeout=20)
    assert (outcome.status, outcome.tries) == (Status.SUCCEEDED, 3)
    assert service_records(settings.data_dir, "T-1")["charges"] == 1


def test_retries_run_out(outcomes, celery_worker, celery_app, settings: Settings) -> None:
    FaultPlans(settings.data_dir).add("T-1", {"charge_payment": {"fail_transient": 10}})
    send(
        celery_app,
        settings,
        "charge_payment",
        "payment",
        "k3",
        CHARGE,
    )
    outcome = outcomes.get(timeout=20)
    assert outcome.status is Status.EXHAUSTED
    assert "after 3 tries" in outcome.error
    assert service_records(settings.data_dir, "T-1")["charges"] == 0


def test_business_failure_is_not_retried(
    outcomes, celery_worker, celery_app, settings: Settings
) -> None:
    declined = {**CHARGE, "card": {"token": "tok_chargeDeclined", "last4": "0002"}}
    send(celery_app, settings, "charge_payment", "payment", "k4", declined)
    outcome = outcomes.get(timeout=20)
    assert (outcome.status, outcome.error) == (Status.REJECTED, "card declined")
    # a repeat of the same key gives the same answer from the ledger
    send(celery_app, settings, "charge_payment", "payment", "k4", CHARGE)
    assert outcomes.get(timeout=20).error == "card declined"
