"""The orchestrator's batch handling against kombu's in-memory transport: no processes,
no broker, real messages and a real store. Acknowledged only after the commit and the
publish; a duplicate refused alone; a publish that fails, or a batch cut off halfway,
leaves every message to be delivered again and loses nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.message import Message

from orchestrator.process import Orchestrator
from saga_core.celery_app import make_app
from saga_core.messages import (
    HEARTBEAT_TASK,
    OUTCOME_TASK,
    Command,
    Heartbeat,
    Held,
    Outcome,
    Phase,
)
from saga_core.middleware import Middleware
from saga_core.signing import Keyring, new_keys
from saga_store import SagaState, StepState, queries
from tests.harness import Harness
from tests.helpers import DEFINITIONS, IDENTITIES, make_order


class Bus:
    """The orchestrator's queue on kombu's in-memory transport, read as the orchestrator
    reads it there (``orchestrator.inbox.KombuInbox``)."""

    def __init__(self, tmp_path: Path, keys: Mapping[str, tuple[str, ...]] | None = None):
        self.h = Harness(tmp_path)
        self.settings = self.h.settings.with_(
            broker_url="memory://",
            queue_prefix=f"t{uuid.uuid4().hex[:8]}.",
            keys=keys or {},
            insecure=not keys,
        )
        self.app = make_app(self.settings)
        self.refusals: list[tuple[str, str]] = []
        self.orchestrator = Orchestrator(
            self.settings, DEFINITIONS, middleware=[Refusals(self.refusals)]
        )
        self.connection = Connection("memory://")
        self.inbox = self.orchestrator.inbox(self.connection)

    def send(self, *bodies: Any, task: str = OUTCOME_TASK) -> None:
        for body in bodies:
            wire = body.to_wire() if isinstance(body, Outcome) else body
            self.app.send_task(task, args=[wire], queue=self.orchestrator.queue)

    def take(self) -> list[Message]:
        return list(self.orchestrator._take(self.inbox, wait=0.5))  # type: ignore[arg-type]

    def handle(self, messages: Sequence[Message]) -> None:
        self.orchestrator._handle(self.h.engine, self.inbox, messages)

    def redeliver(self, messages: Sequence[Message]) -> list[Message]:
        """What the broker does with unacknowledged messages when their consumer goes."""
        for m in messages:
            m.requeue()
        return self.take()

    def close(self) -> None:
        self.inbox.close()
        self.connection.release()


class Refusals(Middleware):
    def __init__(self, seen: list[tuple[str, str]]):
        self.seen = seen

    def refused(self, kind: str, reason: str) -> None:
        self.seen.append((kind, reason))


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    bus = Bus(tmp_path)
    yield bus
    bus.close()


def reserved(bus: Bus, *order_ids: str) -> tuple[list[str], list[Outcome]]:
    """Sagas whose reservation ran: their outcomes, not yet handed to the orchestrator."""
    sagas = [bus.h.submit(make_order(o)) for o in order_ids]
    return sagas, [bus.h.execute_next() for _ in sagas]


def test_a_batch_is_acknowledged_after_its_commit_and_publish(bus: Bus) -> None:
    sagas, outcomes = reserved(bus, "A", "B")
    bus.send(*outcomes)
    published: list[list[Command]] = []
    bus.h.engine.publish = lambda commands, sent: published.append(list(commands))
    messages = bus.take()
    assert len(messages) == 2 and not any(m.acknowledged for m in messages)

    bus.handle(messages)

    assert [m.acknowledged for m in messages] == [True, True]
    assert len(published) == 1  # one publish for the whole batch
    assert [c.operation for c in published[0]] == ["charge_payment"] * 2
    for saga_id in sagas:
        assert bus.h.saga(saga_id).step("charge_payment").state is StepState.RUNNING


def test_a_duplicate_in_a_batch_is_refused_alone(bus: Bus) -> None:
    _, (outcome,) = reserved(bus, "A")
    bus.send(outcome, outcome)
    messages = bus.take()
    bus.handle(messages)
    assert all(m.acknowledged for m in messages)
    assert [c.operation for c in bus.h.commands] == ["charge_payment"]  # sent once
    assert queries.counters(bus.h.engine.db)["duplicate_outcomes"] == 1


def test_a_malformed_message_is_refused_and_the_rest_applied(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    (saga_id,), (outcome,) = reserved(bus, "A")
    bus.send({**outcome.to_wire(), "v": 99}, {"status": "done"})
    bus.send({"not": "an order"}, task="mine_bitcoin")
    bus.send(outcome)
    messages = bus.take()
    bus.handle(messages)
    assert all(m.acknowledged for m in messages)  # refused, never left to loop
    assert "outcome: unknown version 99" in caplog.text
    assert "unknown task 'mine_bitcoin'" in caplog.text
    assert bus.h.saga(saga_id).step("reserve_inventory").state is StepState.COMPLETED


def test_a_publish_that_fails_leaves_the_batch_to_come_again(bus: Bus) -> None:
    (saga_id,), (outcome,) = reserved(bus, "A")
    bus.send(outcome)

    def broker_down(commands: Sequence[Command], sent: Callable[[], None]) -> None:
        raise ConnectionError("broker went away")

    bus.h.engine.publish = broker_down
    messages = bus.take()
    with pytest.raises(ConnectionError):
        bus.handle(messages)
    # Nothing acknowledged: the broker delivers the outcome again
    assert not any(m.acknowledged for m in messages)
    bus.h.engine.publish = bus.h.publish
    again = bus.redeliver(messages)
    bus.handle(again)
    # the transition had committed, so the redelivery is a duplicate, acknowledged now
    assert all(m.acknowledged for m in again) and not bus.h.commands
    # and the command that was never sent goes out when its deadline passes
    bus.h.clock.now += bus.h.settings.step_timeout + 1
    bus.h.engine.sweep()
    assert [c.operation for c in bus.h.commands] == ["charge_payment"]
    bus.h.run_all()
    assert bus.h.saga(saga_id).state is SagaState.COMPLETED


def test_a_batch_cut_off_halfway_changes_nothing_until_it_comes_again(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    sagas, outcomes = reserved(bus, "A", "B", "C")
    bus.send(*outcomes)
    messages = bus.take()
    # Given a process that dies while applying the second outcome of the batch
    from orchestrator import engine as engine_module

    complete_step = engine_module.transitions.complete_step
    calls = []

    def dies_on_the_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is stopped mid-batch
        return complete_step(*args, **kwargs)

    monkeypatch.setattr(engine_module.transitions, "complete_step", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        bus.handle(messages)
    # Then the batch's transaction rolled back whole: nothing moved, nothing sent or acked
    assert not any(m.acknowledged for m in messages) and not bus.h.commands
    for saga_id in sagas:
        assert bus.h.saga(saga_id).step("reserve_inventory").state is StepState.RUNNING
    # and when it comes again, every outcome applies once
    monkeypatch.setattr(engine_module.transitions, "complete_step", complete_step)
    again = bus.redeliver(messages)
    bus.handle(again)
    assert all(m.acknowledged for m in again)
    assert sorted(c.saga_id for c in bus.h.commands) == sorted(sagas)
    assert "duplicate_outcomes" not in queries.counters(bus.h.engine.db)


def test_a_submission_on_the_queue_starts_a_saga(bus: Bus) -> None:
    bus.send(make_order("S-1"), task="saga.submit")
    bus.send(
        {**make_order("S-2"), "faults": {"charge_payment": {"delay_seconds": 9}}},
        task="saga.submit",
    )
    messages = bus.take()
    bus.handle(messages)
    assert all(m.acknowledged for m in messages)
    assert [c.operation for c in bus.h.commands] == ["reserve_inventory"]  # S-2 refused


def test_a_submission_names_its_saga_and_is_signed_for_it(tmp_path: Path) -> None:
    keys = new_keys(IDENTITIES)
    bus = Bus(tmp_path, keys)
    try:
        keyring = Keyring(keys)

        def submit(order: dict[str, Any], kind: str, saga: str | None) -> None:
            body = keyring.sign(kind, order, ["client"])
            kwargs = {} if saga is None else {"saga": saga}
            bus.app.send_task(
                "saga.submit", args=[body], kwargs=kwargs, queue=bus.orchestrator.queue
            )

        submit(make_order("N-1"), "submission:order", "order")  # named, signed for it
        submit(make_order("N-2"), "submission", "order")  # signed for no saga by name
        submit(make_order("N-3"), "submission:order", "cruise")  # no such saga
        bus.handle(bus.take())
        assert [c.operation for c in bus.h.commands] == ["reserve_inventory"]
        assert bus.refusals == [("saga.submit", "bad_signature"), ("saga.submit", "malformed")]
    finally:
        bus.close()


def test_with_signing_on_a_heartbeat_vouches_only_for_its_own_services_steps(
    tmp_path: Path,
) -> None:
    keys = new_keys(IDENTITIES)
    bus = Bus(tmp_path, keys)
    try:
        (saga_id,), _ = reserved(bus, "H")  # the reservation ran; its outcome is not in yet
        keyring = Keyring(keys)
        held = (Held(saga_id, "reserve_inventory", Phase.ACTION, 1),)

        def beat(services: tuple[str, ...], signers: tuple[str, ...]) -> dict[str, Any]:
            wire = Heartbeat("w@h", 7, services, 1.0, held).to_wire()
            return keyring.sign("heartbeat", wire, signers)

        # a payment worker claiming to hold an inventory step; one naming a service it
        # did not sign for; an unsigned one
        bus.send(beat(("payment",), ("payment",)), task=HEARTBEAT_TASK)
        bus.send(beat(("inventory",), ("payment",)), task=HEARTBEAT_TASK)
        bus.send(Heartbeat("w@h", 7, ("inventory",), 1.0, held).to_wire(), task=HEARTBEAT_TASK)
        bus.handle(bus.take())
        assert bus.refusals == [
            (HEARTBEAT_TASK, "wrong_signer"),
            (HEARTBEAT_TASK, "wrong_signer"),
            (HEARTBEAT_TASK, "unsigned"),
        ]
        assert bus.h.saga(saga_id).step("reserve_inventory").held_by is None
        # the inventory worker's own heartbeat is heard
        bus.send(beat(("inventory",), ("inventory",)), task=HEARTBEAT_TASK)
        bus.handle(bus.take())
        assert bus.h.saga(saga_id).step("reserve_inventory").held_by == "w@h pid 7"
    finally:
        bus.close()


def test_a_message_that_cannot_be_applied_is_dead_lettered_and_costs_no_other(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saga_core.dead_letters import QUEUE, DeadLetters
    from saga_store import transitions

    sagas, outcomes = reserved(bus, "A", "B", "C")
    bus.send(*outcomes)
    # Given a store that fails on one saga's transition for a reason of its own (a bug, a
    # value it cannot hold): neither busy nor away
    complete_step = transitions.complete_step

    def fails_for_b(db: Any, saga_id: str, *args: Any, **kwargs: Any) -> Any:
        if saga_id == sagas[1]:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return complete_step(db, saga_id, *args, **kwargs)

    monkeypatch.setattr(transitions, "complete_step", fails_for_b)
    messages = bus.take()
    # When the batch is handled
    bus.handle(messages)
    # Then the others are applied, the one that fails alone is dead-lettered, and every
    # message is acknowledged: nothing loops
    assert all(m.acknowledged for m in messages)
    states = [bus.h.saga(s).step("charge_payment").state for s in sagas]
    assert states == [StepState.RUNNING, StepState.PENDING, StepState.RUNNING]
    [letter] = DeadLetters("memory://", bus.settings.queue(QUEUE)).list()
    assert "OverflowError" in letter.reason and letter.queue == bus.orchestrator.queue.name
    assert ("saga.outcome", "malformed") in bus.refusals


def test_poison_on_the_queue_is_dead_lettered_and_the_rest_applied(bus: Bus) -> None:
    from saga_core.dead_letters import QUEUE, DeadLetters

    (saga_id,), (outcome,) = reserved(bus, "A")
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    bus.send(deep, {**outcome.to_wire(), "attempt": 2**40})
    bus.send(outcome)
    messages = bus.take()
    bus.handle(messages)
    assert all(m.acknowledged for m in messages)
    assert bus.h.saga(saga_id).step("reserve_inventory").state is StepState.COMPLETED
    reasons = sorted(d.reason for d in DeadLetters("memory://", bus.settings.queue(QUEUE)).list())
    assert len(reasons) == 2
    assert any("nested deeper than 32" in r for r in reasons)
    assert any("attempt must be a whole number from 1 to 2147483647" in r for r in reasons)
