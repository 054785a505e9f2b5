"""Signed messages on a running system: outcomes and commands that are forged, unsigned,
signed with another service's key or replayed from long ago are refused where they land,
logged and counted, and change no saga and no service's data."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest

from saga_core.celery_app import make_app
from saga_core.config import ORCHESTRATOR_QUEUE
from saga_core.messages import OUTCOME_TASK, SUBMIT_TASK, Command, Outcome, Phase, Status
from saga_core.processes import wait_for
from saga_core.retry import RetryPolicy
from saga_core.signing import Keyring
from saga_store import SagaState, StepState, open_store, queries
from saga_tools.redis_server import free_port
from tests.helpers import ONE_OF_EACH, make_order, service_records
from tests.integration.conftest import System
from tests.integration.test_metrics import reachable, scrape

pytestmark = pytest.mark.processes

#: Each way a message can fail its check, as a sender without the right key makes it.
FORGERIES = ("unsigned", "bad_signature", "wrong_signer", "expired")


def forged(system: System, kind: str, wire: dict[str, Any], owner: str, other: str) -> dict:
    """``wire`` as a process on the broker could send it, one per way of :data:`FORGERIES`:
    unsigned; signed with a key it made up; signed with the key of ``other`` (a service
    that is not ``owner``); signed with the right key an hour ago and played again now."""
    keys = system.settings.keys
    an_hour_ago = Keyring(keys, clock=lambda: time.time() - 3600)
    return {
        "unsigned": wire,
        "bad_signature": Keyring({owner: (secrets.token_hex(32),)}).sign(kind, wire, [owner]),
        "wrong_signer": Keyring(keys).sign(kind, wire, [other]),
        "expired": an_hour_ago.sign(kind, wire, [owner]),
    }


def refused(port: int, metric: str, **labels: str) -> dict[str, float]:
    m = scrape(port)
    return {
        reason: m.get((f"{metric}_total", frozenset({**labels, "reason": reason}.items())), 0.0)
        for reason in ("unsigned", "bad_signature", "wrong_signer", "unknown_signer", "expired")
    }


@pytest.fixture
def watched(make_system: Callable[..., System]) -> tuple[System, int]:
    port = free_port()
    system = make_system(orchestrator_args=("--metrics-port", str(port)))
    wait_for(lambda: reachable(port), 30, "the metrics endpoint")
    return system, port


def test_forged_outcomes_do_not_move_a_saga(watched: tuple[System, int]) -> None:
    system, port = watched
    app, queue = make_app(system.settings), system.settings.queue(ORCHESTRATOR_QUEUE)
    # Given an order whose charge is under way (slowly) in the payment worker
    saga_id = system.submit(make_order("F-1"), faults={"charge_payment": {"delay_seconds": 8}})
    system.wait_step_running("charge_payment", saga_id, "charge_payment")
    # When a process on the broker says the charge succeeded, in every way it can
    claim = Outcome(
        saga_id, "charge_payment", Phase.ACTION, 1, Status.SUCCEEDED, 1, {"charge_id": "ch_forged"}
    )
    for body in forged(system, "outcome", claim.to_wire(), "payment", "inventory").values():
        app.send_task(OUTCOME_TASK, args=[body], queue=queue)
    # and submits an order without the clients' key
    app.send_task(SUBMIT_TASK, args=[make_order("F-forged")], queue=queue)

    # Then the orchestrator refuses each one, says why, and counts it
    wait_for(
        lambda: (
            refused(port, "saga_messages_refused", kind=OUTCOME_TASK)
            == {
                "unsigned": 1,
                "bad_signature": 1,
                "wrong_signer": 1,
                "unknown_signer": 0,
                "expired": 1,
            }
            and refused(port, "saga_messages_refused", kind=SUBMIT_TASK)["unsigned"] == 1
        ),
        30,
        "the orchestrator to refuse the forged outcomes and the unsigned order",
    )
    log = system.orchestrator.log_text()
    assert "WARNING" in log and "outcome: not signed" in log
    assert "outcome: signed by inventory, not by payment" in log
    assert "outcome: the signature of 'payment' is wrong" in log
    assert "outside the replay window of 300s" in log
    # while the real charge was still running: none of them moved the saga
    view = system.saga(saga_id)
    assert view.step("charge_payment").state is StepState.RUNNING
    assert view.step("create_shipment").state is StepState.PENDING
    # and the saga ends on the service's own word, with its own charge
    view = system.wait(saga_id)
    assert view.state is SagaState.COMPLETED
    assert view.step("charge_payment").output["charge_id"] != "ch_forged"
    assert service_records(system.data_dir, "F-1") == ONE_OF_EACH
    store = open_store(system.settings.store())
    assert not store.execute(
        "SELECT 1 FROM sagas WHERE idempotency_key = 'order:F-forged'"
    ).fetchone()
    assert queries.counters(store).get("duplicate_outcomes", 0) == 0


def test_forged_commands_take_no_effect_in_a_service(watched: tuple[System, int]) -> None:
    system, port = watched
    app = make_app(system.settings)
    # Given a completed order: a live charge
    saga_id = system.submit(make_order("F-2"))
    assert system.wait(saga_id).state is SagaState.COMPLETED
    before = service_records(system.data_dir, "F-2")
    # When a process on the broker asks the payment service to refund it, and to charge a
    # card for an order nobody placed, in every way it can without the payment key
    payload = {
        "reference": "F-3",
        "card": {"token": "tok_visa", "last4": "4242"},
        "amount_cents": 100,
        "currency": "EUR",
    }
    commands = [
        Command(
            "refund_payment", saga_id, "charge_payment", Phase.COMPENSATION, 1, {}, RetryPolicy()
        ),
        Command(
            "charge_payment", "forged", "charge_payment", Phase.ACTION, 1, payload, RetryPolicy()
        ),
    ]
    for command in commands:
        for body in forged(system, command.kind, command.to_wire(), "payment", "shipping").values():
            app.send_task(command.operation, args=[body], queue=system.settings.queue("payment"))

    # Then the payment worker refuses all eight, says why, and its heartbeats count them
    wait_for(
        lambda: (
            refused(port, "saga_worker_messages_refused")
            == {
                "unsigned": 2,
                "bad_signature": 2,
                # the worker holds the payment key alone: another service's is not one it knows
                "wrong_signer": 0,
                "unknown_signer": 2,
                "expired": 2,
            }
        ),
        30,
        "the payment worker to refuse the eight forged commands",
    )
    log = system.workers["payment"].log_text()
    assert (
        "WARNING" in log
        and "refund_payment: command:refund_payment: not signed; dead-lettered" in log
    )
    assert "signed as 'shipping', a key not held" in log
    # and the service's data is as it was: no refund, no charge for the order nobody placed
    assert service_records(system.data_dir, "F-2") == before == ONE_OF_EACH
    assert service_records(system.data_dir, "F-3")["charges"] == 0
    assert system.saga(saga_id).state is SagaState.COMPLETED
    # the worker still serves the system's own, signed commands
    assert system.wait(system.submit(make_order("F-4"))).state is SagaState.COMPLETED
