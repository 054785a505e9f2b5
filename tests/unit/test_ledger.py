"""The services' idempotency: each key takes effect once, and a compensation that comes
first blocks its action."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from order_app import inventory, payment
from saga_core.config import Settings
from saga_core.database import (
    SQLITE,
    Connection,
    Location,
    connect,
    dialect,
    key_taken,
    try_lock_key,
)
from saga_core.errors import BusinessError, TransientError
from saga_core.messages import Command, Outcome, Phase, Status
from saga_core.retry import RetryPolicy
from workers.ledger import UnderWay
from workers.service import Service
from workers.task import StepRunner

ITEMS = {"reference": "ORD-1", "items": [{"sku": "WIDGET", "quantity": 3}]}


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Location | Path:
    """Where the services keep their data: SQLite files in a data directory, or a schema
    on PostgreSQL. Every test below runs on both."""
    if request.param == "sqlite":
        return tmp_path
    return Location(request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema"))


@pytest.fixture(params=[False, True], ids=["again", "first"])
def first(request: pytest.FixtureRequest) -> bool:
    """Whether actions run as their key's first delivery: on PostgreSQL the claim then
    goes with the effect and the ledger row (``ledger._run_at_once``); on a repeat that
    finds the key recorded, the usual way answers. Every action below runs both ways."""
    return bool(request.param)


@pytest.fixture
def inv(place: Location | Path) -> Connection:
    db = inventory.service.database(place)
    inventory.set_stock(db, "WIDGET", 10)
    return db


def available(db: Connection, sku: str) -> int:
    return int(db.execute("SELECT available FROM stock WHERE sku = ?", (sku,)).fetchone()[0])


def test_repeat_returns_the_first_result_and_takes_effect_once(
    inv: Connection, first: bool
) -> None:
    out, fresh = inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS, first=first)
    again, fresh_again = inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS, first=first)
    assert (again, fresh, fresh_again) == (out, True, False)
    assert available(inv, "WIDGET") == 7


def test_business_refusal_is_recorded_and_rolls_back_partial_writes(
    inv: Connection, first: bool
) -> None:
    order = {
        "reference": "o",
        "items": [{"sku": "WIDGET", "quantity": 1}, {"sku": "NOPE", "quantity": 1}],
    }
    for _ in range(2):
        with pytest.raises(BusinessError, match="unknown SKU 'NOPE'"):
            inventory.service.run(inv, "reserve_inventory", "s1:r", order, first=first)
    assert available(inv, "WIDGET") == 10


def test_transient_failure_records_nothing(inv: Connection, first: bool) -> None:
    def boom() -> None:
        raise TransientError("flaky")

    with pytest.raises(TransientError):
        inventory.service.run(
            inv, "reserve_inventory", "s1:r", ITEMS, before_effect=boom, first=first
        )
    inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS, first=first)
    assert available(inv, "WIDGET") == 7


def test_a_repeat_answers_with_the_first_result_whatever_its_effect_meets_now(
    inv: Connection, first: bool
) -> None:
    out, _ = inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS, first=first)

    def flaky() -> None:
        raise TransientError("the database is busy")

    for before in (flaky, None):
        again = inventory.service.run(
            inv, "reserve_inventory", "s1:r", ITEMS, before_effect=before, first=first
        )
        assert again == (out, False)
    inventory.set_stock(inv, "WIDGET", 3)  # what is left is what the first run holds
    assert inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS, first=first) == (
        out,
        False,
    )
    assert available(inv, "WIDGET") == 0


def test_compensation_undoes_once(inv: Connection) -> None:
    inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS)
    inventory.service.run(inv, "release_inventory", "s1:r", ITEMS)
    _, fresh = inventory.service.run(inv, "release_inventory", "s1:r", ITEMS)
    assert not fresh
    assert available(inv, "WIDGET") == 10


def test_compensation_before_action_blocks_the_late_action(inv: Connection, first: bool) -> None:
    out, _ = inventory.service.run(inv, "release_inventory", "s1:r", ITEMS)
    assert out["undone"] is False
    for _ in range(2):
        with pytest.raises(BusinessError, match="already compensated"):
            inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS, first=first)
    assert available(inv, "WIDGET") == 10


def test_declined_card_takes_no_effect(place: Location | Path, first: bool) -> None:
    db = payment.service.database(place)
    card = {"token": "tok_chargeDeclined", "last4": "0002"}
    with pytest.raises(BusinessError, match="declined"):
        payment.service.run(
            db,
            "charge_payment",
            "s1:c",
            {"reference": "o", "card": card, "amount_cents": 100, "currency": "EUR"},
            first=first,
        )
    assert db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 0


def test_stock_cannot_be_set_below_what_is_reserved(inv: Connection) -> None:
    inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS)
    with pytest.raises(BusinessError, match="hold 3"):
        inventory.set_stock(inv, "WIDGET", 2)
    inventory.set_stock(inv, "WIDGET", 20)
    assert inventory.list_stock(inv) == [
        {"sku": "WIDGET", "on_hand": 20, "available": 17, "reserved": 3}
    ]


def test_replicas_running_one_key_at_once_take_effect_once(
    inv: Connection, place: Location | Path
) -> None:
    """Two replicas of the service (a connection each) get the same reservation at the same
    moment. On SQLite the second waits for the database's write lock, then answers with the
    first's result; on PostgreSQL it finds the key under way and leaves it to the first at
    once (``UnderWay``: the step runner answers nothing), and a later run answers with the
    first's result. Either way the stock moves once."""
    first_inside = threading.Event()
    second_began = threading.Event()  # SQLite: its BEGIN IMMEDIATE is under way
    second_done = threading.Event()
    results: dict[str, Any] = {}

    def hold_the_key() -> None:
        first_inside.set()
        if dialect(inv) == SQLITE:  # the first holds the key until the second waits on it
            assert second_began.wait(10), "the second replica never waited on the first"
        else:  # or until the second has left it
            assert second_done.wait(10), "the second replica never came back"

    def replica(name: str, before_effect: Any = None) -> None:
        db = inventory.service._open(inventory.service.where(place))  # a connection of its own
        if name == "two" and dialect(db) == SQLITE:
            db.set_trace_callback(  # type: ignore[attr-defined]
                lambda sql: second_began.set() if sql.startswith("BEGIN") else None
            )
        try:
            results[name] = inventory.service.run(
                db, "reserve_inventory", "s1:r", ITEMS, before_effect=before_effect
            )
        except UnderWay as exc:
            results[name] = exc
        finally:
            if name == "two":
                second_done.set()
            db.close()

    one = threading.Thread(target=replica, args=("one", hold_the_key))
    one.start()
    assert first_inside.wait(10)
    two = threading.Thread(target=replica, args=("two",))
    two.start()
    one.join(20)
    two.join(20)
    out_one, fresh_one = results["one"]
    assert fresh_one is True
    if dialect(inv) == SQLITE:
        assert results["two"] == (out_one, False)
    else:
        assert isinstance(results["two"], UnderWay)
        assert inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS) == (out_one, False)
    assert available(inv, "WIDGET") == 7


class Provider:
    """An outside system that takes an idempotency key, as a payment provider's API does:
    a key seen before gets the first answer back, and no second charge."""

    def __init__(self) -> None:
        self.charges: dict[str, str] = {}
        self.refunds: dict[str, str] = {}
        self.calls: list[str] = []

    def charge(self, key: str) -> str:
        self.calls.append(key)
        return self.charges.setdefault(key, f"ch_{len(self.charges) + 1}")

    def refund(self, key: str, charge_id: str) -> str:
        self.calls.append(key)
        return self.refunds.setdefault(key, f"re_{charge_id}")


def test_an_outside_effect_is_made_once_by_its_key(place: Location | Path) -> None:
    provider, died = Provider(), []
    payments = Service("payments")

    @payments.action("take_payment", outside=True)
    def take(payload: dict[str, Any], key: str) -> dict[str, str]:
        charge_id = provider.charge(key)
        if not died:  # the worker dies after the provider's answer, before the ledger's
            died.append(charge_id)
            raise TransientError("died before the answer was recorded")
        return {"charge_id": charge_id}

    @payments.compensation("refund_payment", undoes="take_payment", outside=True)
    def refund(payload: dict[str, Any], taken: dict[str, str], key: str) -> dict[str, str]:
        return {"refund_id": provider.refund(key, taken["charge_id"])}

    db = payments.database(place)
    with pytest.raises(TransientError):
        payments.run(db, "take_payment", "s1:pay", {"amount_cents": 100})
    # run again (a retry, a redelivery): the same key, so the provider's first charge
    out, fresh = payments.run(db, "take_payment", "s1:pay", {"amount_cents": 100})
    assert (out, fresh) == ({"charge_id": "ch_1"}, True)
    # and from then on the ledger's record, without asking the provider
    assert payments.run(db, "take_payment", "s1:pay", {}) == ({"charge_id": "ch_1"}, False)
    assert provider.calls == ["s1:pay/take_payment"] * 2 and len(provider.charges) == 1
    # the compensation has a key of its own, and takes effect once too
    undone = payments.run(db, "refund_payment", "s1:pay", {})
    assert payments.run(db, "refund_payment", "s1:pay", {})[0] == undone[0]
    assert undone[0] == {"refund_id": "re_ch_1"}
    assert provider.calls[2:] == ["s1:pay/refund_payment"]


def test_on_postgresql_a_run_of_a_key_under_way_on_another_replica_is_left_to_it(
    postgres_url: str, pg_schema: str
) -> None:
    """The lease on PostgreSQL is the ledger transaction's lock on the key: a run that finds
    it held answers nothing and takes no effect, and the lock dies with its holder's
    session, however that ends."""
    place = Location(postgres_url, pg_schema)
    inv = inventory.service.database(place)
    inventory.set_stock(inv, "WIDGET", 10)
    runner = StepRunner(Settings(database_url=place.url), inventory.service)
    runner._database = place  # the test's own schema
    command = Command(
        "reserve_inventory", "s1", "reserve_inventory", Phase.ACTION, 1, ITEMS, RetryPolicy()
    )
    other = inventory.service._open(place)  # another replica, mid-run on the key
    other.execute("BEGIN")
    assert key_taken(try_lock_key(other, "ledger", command.key))
    assert runner.run(command, tries=0) is None
    assert runner.run(command, tries=0, redelivered=True) is None
    assert available(inv, "WIDGET") == 10
    # its server process ends (a crash, a failover): the key is free, and runs here once
    backend = other.execute("SELECT pg_backend_pid()").fetchone()[0]
    # waits for the end, so that the lock is gone when it returns
    inv.execute("SELECT pg_terminate_backend(?, 10000)", (backend,))
    outcome = runner.run(command, tries=0)
    assert isinstance(outcome, Outcome) and outcome.status is Status.SUCCEEDED
    assert available(inv, "WIDGET") == 7


def test_on_postgresql_a_key_under_way_in_another_schema_is_not_this_ones(
    postgres_url: str, pg_schema: str
) -> None:
    """Advisory locks are the whole database's; two services (or two shops) with schemas
    of their own in one database never hold each other's keys."""
    place = Location(postgres_url, pg_schema)
    inventory.set_stock(inventory.service.database(place), "WIDGET", 10)
    other = connect(Location(postgres_url, f"{pg_schema}_other"))
    try:
        other.execute("BEGIN")
        assert key_taken(try_lock_key(other, "ledger", "s1:r"))
        _, fresh = inventory.service.run(
            inventory.service.database(place), "reserve_inventory", "s1:r", ITEMS
        )
        assert fresh is True
        other.execute("ROLLBACK")
    finally:
        other.execute(f"DROP SCHEMA IF EXISTS {pg_schema}_other CASCADE")
        other.close()


def test_on_postgresql_a_first_delivery_whose_key_is_under_way_takes_no_effect(
    postgres_url: str, pg_schema: str
) -> None:
    """A charge reads nothing before it writes, so its first delivery sends the key's
    claim, the charge and the ledger row at once: where another run holds the key, the
    claim fails them all, and the run leaves the key to the holder."""
    place = Location(postgres_url, pg_schema)
    db = payment.service.database(place)
    charge = {
        "reference": "o",
        "card": {"token": "tok_visa", "last4": "4242"},
        "amount_cents": 100,
        "currency": "EUR",
    }
    other = payment.service._open(place)
    other.execute("BEGIN")
    assert key_taken(try_lock_key(other, "ledger", "s1:c"))
    with pytest.raises(UnderWay):
        payment.service.run(db, "charge_payment", "s1:c", charge, first=True)
    assert db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM idempotency").fetchone()[0] == 0
    other.execute("ROLLBACK")
    out, fresh = payment.service.run(db, "charge_payment", "s1:c", charge, first=True)
    assert fresh and db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 1
    assert payment.service.run(db, "charge_payment", "s1:c", charge, first=True) == (out, False)
    other.close()
