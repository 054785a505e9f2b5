"""Fault injection is a test tool behind a switch: with default settings, nothing a client
puts in an order, and nothing a command carries, can make a process crash, sleep or fail."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from saga_core.celery_app import make_app
from saga_core.messages import Command, Phase
from saga_core.processes import wait_for
from saga_core.retry import RetryPolicy
from saga_faults.plans import FaultPlans
from saga_store import SagaState
from tests.helpers import ONE_OF_EACH, make_order, service_records, signed
from tests.integration.conftest import System
from tests.integration.test_cli import saga, stored_sagas, write
from tests.integration.test_http_api import Api, serve_api

pytestmark = [pytest.mark.processes, pytest.mark.any_broker]

#: Every fault the order schema accepted before fault injection left the product, each
#: in the place an order put it.
OLD_FAULT_PLANS = {
    "fail_transient": {"charge_payment": {"fail_transient": 1000}},
    "fail_business": {"charge_payment": {"fail_business": True}},
    "crash_after_effect": {"create_shipment": {"crash_after_effect": True}},
    "crash_before_effect": {"reserve_inventory": {"crash_before_effect": True}},
    "delay_seconds": {"charge_payment": {"delay_seconds": 60}},
    "crash_at": {"orchestrator": {"crash_at": "before_dispatch:charge_payment"}},
}
EVERY_FAULT = {
    "orchestrator": {"crash_at": "after_dispatch:create_shipment"},
    "reserve_inventory": {"crash_before_effect": True},
    "charge_payment": {"fail_transient": 1000, "delay_seconds": 60},
    "create_shipment": {"crash_after_effect": True},
    "send_confirmation": {"fail_business": True},
}


@pytest.fixture
def default_system(make_system: Callable[..., System]) -> System:
    """A system as a user starts it: no SAGA_FAULTS."""
    return make_system(faults=False)


@pytest.fixture
def api(default_system: System) -> Iterator[Api]:
    yield from serve_api(default_system)


@pytest.mark.parametrize("word", OLD_FAULT_PLANS)
def test_an_order_carrying_a_fault_is_refused_and_nothing_is_stored(
    word: str, api: Api, default_system: System, tmp_path: Any
) -> None:
    order = make_order(f"F-{word}", faults=OLD_FAULT_PLANS[word])
    # Over HTTP: 422, naming the field
    reply = api.post_order(order)
    assert reply.status == 422, reply.body
    assert reply.body["errors"] == [{"field": "faults", "problem": "unknown field"}]
    # From the command line: exit 2, naming the field
    result = saga(default_system.settings, "submit", write(tmp_path, order))
    assert result.returncode == 2 and "faults: unknown field" in result.stderr
    # Nothing stored, nothing sent
    assert stored_sagas(default_system.settings) == []
    assert service_records(default_system.data_dir, f"F-{word}")["reservations_held"] == 0


def test_fault_plans_and_fault_fields_mean_nothing_without_the_switch(
    default_system: System,
) -> None:
    # Given a fault plan using every fault, written where a faulty system would read it
    FaultPlans(default_system.data_dir).add("N-1", EVERY_FAULT)
    # and a command that carries the old fault field, sent straight to the payment worker
    app = make_app(default_system.settings)
    command = Command(
        "charge_payment",
        "raw",
        "charge_payment",
        Phase.ACTION,
        1,
        {
            "reference": "N-0",
            "card": {"token": "tok_visa", "last4": "4242"},
            "amount_cents": 100,
            "currency": "EUR",
        },
        RetryPolicy(),
    )
    wire = {**command.to_wire(), "fault_plan": {"charge_payment": {"crash_before_effect": True}}}
    # signed: the system's own kind of command, which a fault plan inside still cannot arm
    wire = signed(default_system.settings, command.kind, wire, "payment")
    app.send_task("charge_payment", args=[wire], queue=default_system.settings.queue("payment"))
    # When the order runs on a system started with default settings
    saga_id = default_system.submit(make_order("N-1"))
    # Then it completes, well before the plan's 60 s delay: no crash, no stall, no failure
    view = default_system.wait(saga_id, timeout=50)
    assert view.state is SagaState.COMPLETED
    assert service_records(default_system.data_dir, "N-1") == ONE_OF_EACH
    wait_for(
        lambda: service_records(default_system.data_dir, "N-0")["charges"] == 1,
        20,
        "the raw command to be run",
    )
    assert all(child.alive() for child in default_system.children)
    assert not (default_system.data_dir / "crashpoints").exists()
    assert "fault injection is ON" not in default_system.logs()
