"""The order saga with every process in a container of the project's image, through
pytest-celery's setup, on a Redis broker and on a RabbitMQ broker (each in a container):
the seed's three scenarios, and a worker container killed mid-saga."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_celery import CeleryTestSetup

import saga_app
from saga_core.processes import wait_for
from saga_faults.plans import FaultPlans
from saga_store import SagaState, SagaView
from saga_tools.audit import audit
from tests.containers.conftest import System
from tests.helpers import (
    DECLINED_CARD,
    ONE_OF_EACH,
    OPERATIONS,
    assert_declined_and_undone,
    make_order,
    service_records,
)

# Containers start in seconds, but a cold machine builds their images first.
# one xdist worker runs them all, one after another: one set of broker containers, and the
# compose stacks' host ports taken by one stack at a time
pytestmark = [
    pytest.mark.containers,
    pytest.mark.timeout(480),
    pytest.mark.xdist_group("containers"),
]


def submit(system: System, order: dict[str, Any], faults: dict[str, Any] | None = None) -> str:
    """Submit ``order`` through the Python API, as a client on the host would."""
    if faults is not None:
        FaultPlans(system.data_dir, OPERATIONS).add(order["order_id"], faults)
    return saga_app.submit(order, settings=system.host)


def wait(system: System, saga_id: str, timeout: float = 60) -> SagaView:
    return saga_app.wait(saga_id, settings=system.host, timeout=timeout)


def charge_under_way(system: System, order_id: str, seconds: float) -> str:
    """Submit an order whose charge takes ``seconds``; returns its saga once the charge
    runs in the payment container."""
    saga_id = submit(system, make_order(order_id), {"charge_payment": {"delay_seconds": seconds}})
    marker = system.data_dir / "running" / f"charge_payment.{saga_id}:charge_payment"
    wait_for(marker.exists, 30, "the charge to start in the payment container")
    return saga_id


def wait_exited(container: Any) -> None:
    def exited() -> bool:
        container.reload()
        return bool(container.status == "exited")

    wait_for(exited, 30, f"{container.name} to stop")


def assert_audit_clean(system: System) -> None:
    report = audit(system.data_dir, settle_seconds=0)
    assert report.ok, report.to_dict()


def test_an_order_completes(celery_setup: CeleryTestSetup, system: System) -> None:
    assert celery_setup.ready()
    assert {w.container.name for w in celery_setup.worker_cluster} == {
        w.container.name for w in system.workers.values()
    }
    saga_id = submit(system, make_order("C-1"))
    assert wait(system, saga_id).state is SagaState.COMPLETED
    assert service_records(system.data_dir, "C-1") == ONE_OF_EACH
    assert_audit_clean(system)


def test_a_payment_failure_is_compensated(celery_setup: CeleryTestSetup, system: System) -> None:
    saga_id = submit(system, make_order("C-2", card_number=DECLINED_CARD))
    assert_declined_and_undone(wait(system, saga_id), system.data_dir, "C-2")
    assert_audit_clean(system)


def test_a_killed_orchestrator_container_resumes_the_saga(
    celery_setup: CeleryTestSetup, system: System
) -> None:
    # Given a saga whose charge is under way
    saga_id = charge_under_way(system, "C-3", 2)
    # When the orchestrator's container is SIGKILLed, and started again once the charge
    # has answered (its outcome waits in the orchestrator's queue)
    system.orchestrator.kill("SIGKILL")
    wait_exited(system.orchestrator)
    wait_for(lambda: service_records(system.data_dir, "C-3")["charges"] == 1, 30, "the charge")
    system.orchestrator.restart()
    # Then the saga completes, every effect exactly once
    assert wait(system, saga_id).state is SagaState.COMPLETED
    assert service_records(system.data_dir, "C-3") == ONE_OF_EACH
    assert_audit_clean(system)


def test_a_killed_worker_container_charges_nobody_twice(
    celery_setup: CeleryTestSetup, system: System
) -> None:
    # Given three orders whose charges are slow, the first under way
    first = charge_under_way(system, "C-4", 3)
    others = [
        submit(system, make_order(f"C-{n}"), {"charge_payment": {"delay_seconds": 3}})
        for n in (5, 6)
    ]
    # When the payment worker's container is SIGKILLed mid-charge and started again
    payment = system.workers["payment"]
    payment.kill("SIGKILL")
    wait_exited(payment.container)
    payment.restart()
    # Then every saga ends completed, each charged once
    for saga_id in (first, *others):
        assert wait(system, saga_id, timeout=90).state is SagaState.COMPLETED
    for order_id in ("C-4", "C-5", "C-6"):
        assert service_records(system.data_dir, order_id) == ONE_OF_EACH, order_id
    assert_audit_clean(system)
