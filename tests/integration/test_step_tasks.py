"""The service tasks in Celery's in-process test worker (pytest-celery's
``celery.contrib.pytest`` fixtures) on the real Redis broker: replies, retries, refusals."""

from __future__ import annotations

import queue
from typing import Any

import pytest
from celery import Celery

from saga_core.celery_app import OUTCOME_TASK
from saga_core.celery_app import celery_config as saga_celery_config
from saga_core.config import ORCHESTRATOR_QUEUE, SERVICES, Settings
from saga_core.retry import RetryPolicy
from tests.helpers import service_records
from workers import SERVICES as SERVICE_OBJECTS
from workers import inventory, task

CHARGE = {
    "reference": "T-1",
    "card": {"token": "tok_visa", "last4": "4242"},
    "amount_cents": 1000,
    "currency": "EUR",
}
FAST = RetryPolicy(max_retries=2, backoff_base=0.05, backoff_max=0.1).to_dict()


@pytest.fixture
def celery_config(settings: Settings) -> dict[str, Any]:
    return saga_celery_config(settings)


@pytest.fixture
def celery_worker_parameters(settings: Settings) -> dict[str, Any]:
    return {
        "queues": [settings.queue(q) for q in (*SERVICES, ORCHESTRATOR_QUEUE)],
        "perform_ping_check": False,  # the ping needs a result backend; we keep none
    }


@pytest.fixture
def outcomes(celery_app: Celery, settings: Settings) -> queue.Queue[dict[str, Any]]:
    """Registers the service tasks, and an outcome task that hands outcomes to the test."""
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    for service in SERVICE_OBJECTS.values():
        task.register(celery_app, settings, service)
    celery_app.task(name=OUTCOME_TASK)(received.put)
    inventory.set_stock(inventory.service.database(settings.data_dir), "WIDGET", 5)
    return received


def send(
    app: Celery,
    settings: Settings,
    name: str,
    queue_name: str,
    key: str,
    payload: dict[str, Any],
    **extra: Any,
) -> None:
    reply = {"saga_id": "s", "step": name, "phase": "action", "attempt": 1}
    app.send_task(
        name,
        kwargs={"key": key, "payload": payload, "reply": reply, **extra},
        queue=settings.queue(queue_name),
    )


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
    assert outcome["status"] == "succeeded"
    assert outcome["output"]["reservation_id"].startswith("res_")
    assert (outcome["saga_id"], outcome["step"]) == ("s", "reserve_inventory")


def test_transient_failures_are_retried_then_succeed(
    outcomes, celery_worker, celery_app, settings: Settings
) -> None:
    send(
        celery_app,
        settings,
        "charge_payment",
        "payment",
        "k2",
        CHARGE,
        retry=FAST,
        fault_plan={"charge_payment": {"fail_transient": 2}},
    )
    assert outcomes.get(timeout=20)["status"] == "succeeded"
    assert service_records(settings.data_dir, "T-1")["charges"] == 1


def test_retries_run_out(outcomes, celery_worker, celery_app, settings: Settings) -> None:
    send(
        celery_app,
        settings,
        "charge_payment",
        "payment",
        "k3",
        CHARGE,
        retry=FAST,
        fault_plan={"charge_payment": {"fail_transient": 10}},
    )
    outcome = outcomes.get(timeout=20)
    assert outcome["status"] == "exhausted"
    assert "after 3 tries" in outcome["error"]
    assert service_records(settings.data_dir, "T-1")["charges"] == 0


def test_business_failure_is_not_retried(
    outcomes, celery_worker, celery_app, settings: Settings
) -> None:
    declined = {**CHARGE, "card": {"token": "tok_chargeDeclined", "last4": "0002"}}
    send(celery_app, settings, "charge_payment", "payment", "k4", declined, retry=FAST)
    outcome = outcomes.get(timeout=20)
    assert (outcome["status"], outcome["error"]) == ("rejected", "card declined")
    # a repeat of the same key gives the same answer from the ledger
    send(celery_app, settings, "charge_payment", "payment", "k4", CHARGE, retry=FAST)
    assert outcomes.get(timeout=20)["error"] == "card declined"
