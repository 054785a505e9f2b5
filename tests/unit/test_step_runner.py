"""The step wrapper without Celery: the reply, retries, refusals, the poison-message guard,
the lease on a key, and the message contract both sides read."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from order_app import payment
from saga_core.config import Settings
from saga_core.errors import MalformedMessage, TransientError
from saga_core.messages import (
    VERSION,
    Command,
    Heartbeat,
    Held,
    Outcome,
    Phase,
    Ping,
    Pong,
    Status,
)
from saga_core.middleware import Middleware
from saga_core.retry import RetryPolicy
from tests.helpers import service_records
from workers import ledger
from workers.task import Retry, StepRunner

CARD = {"token": "tok_visa", "last4": "4242"}
CHARGE = Command(
    "charge_payment",
    "saga-1",
    "charge_payment",
    Phase.ACTION,
    1,
    {"reference": "R-1", "card": CARD, "amount_cents": 500, "currency": "EUR"},
    RetryPolicy(max_retries=2, backoff_base=0.1, backoff_max=1.0),
)


@pytest.fixture
def runner(tmp_path: Path) -> StepRunner:
    return StepRunner(Settings(data_dir=tmp_path, max_deliveries=3), payment.service)


def with_card(token: str) -> Command:
    return replace(CHARGE, payload={**CHARGE.payload, "card": {**CARD, "token": token}})


def test_a_run_answers_its_dispatch(runner: StepRunner, tmp_path: Path) -> None:
    outcome = runner.run(CHARGE, tries=0)
    assert isinstance(outcome, Outcome)
    assert (outcome.saga_id, outcome.step, outcome.phase, outcome.attempt, outcome.tries) == (
        "saga-1",
        "charge_payment",
        Phase.ACTION,
        1,
        1,
    )
    assert outcome.status is Status.SUCCEEDED and outcome.output["charge_id"].startswith("ch_")
    # a repeat of the same key answers from the ledger: the same charge, no second one
    assert runner.run(CHARGE, tries=0) == outcome
    assert service_records(tmp_path, "R-1")["charges"] == 1


def test_a_transient_failure_is_retried_with_backoff_then_given_up(runner: StepRunner) -> None:
    flaky = with_card("tok_processingError")
    first, second = (runner.run(flaky, tries=n) for n in range(2))
    assert isinstance(first, Retry) and isinstance(second, Retry)
    # exponential from 0.1 s, with equal jitter: [d/2, d]
    assert 0.05 <= first.countdown <= 0.1 and 0.1 <= second.countdown <= 0.2
    last = runner.run(flaky, tries=2)
    assert isinstance(last, Outcome) and last.status is Status.EXHAUSTED
    assert last.tries == 3 and "after 3 tries" in last.error


def test_a_business_refusal_is_not_retried_and_every_repeat_agrees(runner: StepRunner) -> None:
    declined = with_card("tok_chargeDeclined")
    first = runner.run(declined, tries=0)
    assert isinstance(first, Outcome)
    assert (first.status, first.error) == (Status.REJECTED, "card declined")
    assert runner.run(CHARGE, tries=0) == first  # same key: the ledger's answer stands


def test_a_payload_the_service_cannot_read_is_refused(runner: StepRunner) -> None:
    outcome = runner.run(replace(CHARGE, payload={"card": None}), tries=0)
    assert isinstance(outcome, Outcome) and outcome.status is Status.REJECTED
    assert "malformed payload" in outcome.error


@pytest.mark.parametrize(
    "again",
    [
        {"redelivered": True},
        # On Redis a worker that dies leaves its message unacknowledged for the visibility
        # timeout: what comes back first is the orchestrator's next dispatch.
        {"command": replace(CHARGE, attempt=3)},
    ],
    ids=["redelivered", "sent_again"],
)
def test_a_step_whose_worker_died_each_time_is_given_up(
    runner: StepRunner, tmp_path: Path, again: dict[str, Any]
) -> None:
    db = payment.service.database(tmp_path)
    # Given two runs of the charge that started and never ended (their worker died)
    for _ in range(2):
        ledger.begin_delivery(db, CHARGE.key, CHARGE.operation)
    # When it comes a third time, that run counts as the third death
    outcome = runner.run(again.get("command", CHARGE), 0, again.get("redelivered", False))
    assert isinstance(outcome, Outcome) and outcome.status is Status.EXHAUSTED
    assert "died in each of its last 3 runs" in outcome.error
    assert service_records(tmp_path, "R-1")["charges"] == 0


def test_a_first_dispatch_leaves_no_run_counted(runner: StepRunner, tmp_path: Path) -> None:
    outcome = runner.run(CHARGE, tries=0)
    assert isinstance(outcome, Outcome) and outcome.status is Status.SUCCEEDED
    db = payment.service.database(tmp_path)
    assert ledger.begin_delivery(db, CHARGE.key, CHARGE.operation) == 1


def test_one_death_is_not_a_poison_message(runner: StepRunner, tmp_path: Path) -> None:
    ledger.begin_delivery(payment.service.database(tmp_path), CHARGE.key, CHARGE.operation)
    outcome = runner.run(CHARGE, tries=0, redelivered=True)
    assert isinstance(outcome, Outcome) and outcome.status is Status.SUCCEEDED
    # and the run that finished cleared the charge's count: this delivery is its first
    assert (
        ledger.begin_delivery(payment.service.database(tmp_path), CHARGE.key, CHARGE.operation) == 1
    )


def test_middleware_errors_count_as_the_operation_s(tmp_path: Path) -> None:
    class Flaky(Middleware):
        def before_run(self, command: Command, tries: int) -> None:
            if tries == 0:
                raise TransientError("flaky")

    runner = StepRunner(Settings(data_dir=tmp_path), payment.service, [Flaky()])
    assert isinstance(runner.run(CHARGE, tries=0), Retry)
    assert runner.run(CHARGE, tries=1).status is Status.SUCCEEDED  # type: ignore[union-attr]


def test_a_command_must_fit_its_operation(runner: StepRunner) -> None:
    with pytest.raises(MalformedMessage, match="does not fit"):
        runner.check(replace(CHARGE, phase=Phase.COMPENSATION))
    with pytest.raises(MalformedMessage, match="has no 'mine_bitcoin'"):
        runner.check(replace(CHARGE, operation="mine_bitcoin"))


def test_messages_cross_the_wire_unchanged() -> None:
    assert Command.from_wire(CHARGE.operation, CHARGE.to_wire()) == CHARGE
    outcome = CHARGE.answer(Status.EXHAUSTED, 4, error="gave up")
    assert Outcome.from_wire(outcome.to_wire()) == outcome
    assert CHARGE.to_wire()["v"] == VERSION


WIRE = CHARGE.to_wire()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([WIRE], "must be an object"),
        ({**WIRE, "v": None}, "no version field"),
        ({**WIRE, "v": VERSION + 1}, f"unknown version {VERSION + 1}"),
        ({**WIRE, "saga_id": ""}, "saga_id must be a non-empty string"),
        ({**WIRE, "saga_id": "x" * 500}, "saga_id must be a non-empty string"),
        ({**WIRE, "phase": "sideways"}, "phase must be"),
        ({**WIRE, "attempt": 0}, "attempt must be a whole number"),
        ({**WIRE, "attempt": True}, "attempt must be a whole number"),
        ({**WIRE, "payload": "x"}, "payload must be an object"),
        ({**WIRE, "retry": {"max_retries": -1}}, "retry is not a retry policy"),
        ({**WIRE, "retry": {"tries": 3}}, "retry is not a retry policy"),
    ],
)
def test_a_malformed_command_is_refused_naming_the_problem(body: Any, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        Command.from_wire("charge_payment", body)


OUTCOME = CHARGE.answer(Status.SUCCEEDED, 1, {"charge_id": "ch_1"}).to_wire()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({**OUTCOME, "v": "1"}, "unknown version"),
        ({**OUTCOME, "status": "done"}, "status must be one of"),
        ({**OUTCOME, "tries": None}, "tries must be a whole number"),
        ({**OUTCOME, "error": 5}, "error must be a string"),
    ],
)
def test_a_malformed_outcome_is_refused_naming_the_problem(body: Any, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        Outcome.from_wire(body)


BEAT = Heartbeat(
    "payment-main@host", 41, ("payment",), 1.0, (Held("saga-1", "charge", Phase.ACTION, 2),)
)


def test_a_heartbeat_crosses_the_wire_unchanged() -> None:
    assert Heartbeat.from_wire(BEAT.to_wire()) == BEAT


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({**BEAT.to_wire(), "v": 2}, "unknown version"),
        ({**BEAT.to_wire(), "worker": ""}, "worker must be a non-empty string"),
        ({**BEAT.to_wire(), "services": "payment"}, "services must be a list"),
        ({**BEAT.to_wire(), "interval": 0}, "interval must be a number of seconds above 0"),
        ({**BEAT.to_wire(), "held": [1]}, "each held entry must be an object"),
        ({**BEAT.to_wire(), "held": [{"saga_id": "s", "step": "x"}]}, "phase must be"),
        ({**BEAT.to_wire(), "held": [{}] * 1001}, "held must be a list of at most"),
    ],
)
def test_a_malformed_heartbeat_is_refused_naming_the_problem(body: Any, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        Heartbeat.from_wire(body)


PING = Ping("saga.pong." + "ab" * 16, 1_900_000_000.0)


def test_a_ping_and_its_pong_cross_the_wire_unchanged() -> None:
    assert Ping.from_wire(PING.to_wire()) == PING
    assert Pong.from_wire(Pong("payment-main@host", 7).to_wire()) == Pong("payment-main@host", 7)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        # an answer may go to a pong queue only, never into a queue of the system
        ({**PING.to_wire(), "reply_to": "orchestrator"}, "reply_to must name a queue saga.pong"),
        ({**PING.to_wire(), "reply_to": "saga.pong.x"}, "reply_to must name a queue saga.pong"),
        ({**PING.to_wire(), "deadline": "soon"}, "deadline must be a Unix time"),
        ({**PING.to_wire(), "v": None}, "no version field"),
    ],
)
def test_a_malformed_ping_is_refused_naming_the_problem(body: Any, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        Ping.from_wire(body)


def _hold_lease(data_dir: Path, key: str, taken: Any, release: Any) -> None:
    with payment.service.leases(data_dir).hold(key) as held:
        taken.put(held)
        release.wait(30)


def test_a_second_run_of_a_key_under_way_elsewhere_is_left_to_it(
    runner: StepRunner, tmp_path: Path
) -> None:
    # Given another process running the charge (it holds the key's lease)
    context = multiprocessing.get_context("fork")
    taken, release = context.Queue(), context.Event()
    other = context.Process(target=_hold_lease, args=(tmp_path, CHARGE.key, taken, release))
    other.start()
    try:
        assert taken.get(timeout=30) is True
        # Then this run answers nothing and takes no effect
        assert runner.run(CHARGE, tries=0) is None
        assert runner.run(CHARGE, tries=0, redelivered=True) is None
        assert service_records(tmp_path, "R-1")["charges"] == 0
        # and another key runs meanwhile
        other_charge = replace(
            CHARGE, saga_id="saga-2", payload={**CHARGE.payload, "reference": "R-2"}
        )
        assert isinstance(runner.run(other_charge, tries=0), Outcome)
    finally:
        release.set()
        other.join(30)
    # When that process is gone (its lease with it), the key runs here
    outcome = runner.run(CHARGE, tries=0)
    assert isinstance(outcome, Outcome) and outcome.status is Status.SUCCEEDED
    assert service_records(tmp_path, "R-1")["charges"] == 1


def test_a_lease_dies_with_its_holder(tmp_path: Path) -> None:
    # A holder SIGKILLed mid-run leaves no lease behind
    context = multiprocessing.get_context("fork")
    taken, release = context.Queue(), context.Event()
    other = context.Process(target=_hold_lease, args=(tmp_path, "k", taken, release))
    other.start()
    assert taken.get(timeout=30) is True
    with payment.service.leases(tmp_path).hold("k") as held:
        assert held is False
    other.kill()
    other.join(30)
    with payment.service.leases(tmp_path).hold("k") as held:
        assert held is True
