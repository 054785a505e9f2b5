"""The services' idempotency: each key takes effect once, and a compensation that comes
first blocks its action."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saga_core.errors import BusinessError, TransientError
from tests.helpers import available
from workers import inventory, payment

ITEMS = {"reference": "ORD-1", "items": [{"sku": "WIDGET", "quantity": 3}]}


@pytest.fixture
def inv(tmp_path: Path) -> sqlite3.Connection:
    db = inventory.service.database(tmp_path)
    inventory.set_stock(db, "WIDGET", 10)
    return db


def test_repeat_returns_the_first_result_and_takes_effect_once(inv, tmp_path: Path) -> None:
    first, fresh = inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS)
    again, fresh_again = inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS)
    assert (again, fresh, fresh_again) == (first, True, False)
    assert available(tmp_path, "WIDGET") == 7


def test_business_refusal_is_recorded_and_rolls_back_partial_writes(inv, tmp_path: Path) -> None:
    order = {
        "reference": "o",
        "items": [{"sku": "WIDGET", "quantity": 1}, {"sku": "NOPE", "quantity": 1}],
    }
    for _ in range(2):
        with pytest.raises(BusinessError, match="unknown SKU 'NOPE'"):
            inventory.service.run(inv, "reserve_inventory", "s1:r", order)
    assert available(tmp_path, "WIDGET") == 10


def test_transient_failure_records_nothing(inv, tmp_path: Path) -> None:
    def boom() -> None:
        raise TransientError("flaky")

    with pytest.raises(TransientError):
        inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS, before_effect=boom)
    inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS)
    assert available(tmp_path, "WIDGET") == 7


def test_compensation_undoes_once(inv, tmp_path: Path) -> None:
    inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS)
    inventory.service.run(inv, "release_inventory", "s1:r", ITEMS)
    _, fresh = inventory.service.run(inv, "release_inventory", "s1:r", ITEMS)
    assert not fresh
    assert available(tmp_path, "WIDGET") == 10


def test_compensation_before_action_blocks_the_late_action(inv, tmp_path: Path) -> None:
    out, _ = inventory.service.run(inv, "release_inventory", "s1:r", ITEMS)
    assert out["undone"] is False
    with pytest.raises(BusinessError, match="already compensated"):
        inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS)
    assert available(tmp_path, "WIDGET") == 10


def test_declined_card_takes_no_effect(tmp_path: Path) -> None:
    db = payment.service.database(tmp_path)
    card = {"token": "tok_chargeDeclined", "last4": "0002"}
    with pytest.raises(BusinessError, match="declined"):
        payment.service.run(
            db,
            "charge_payment",
            "s1:c",
            {"reference": "o", "card": card, "amount_cents": 100, "currency": "EUR"},
        )
    assert db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 0


def test_stock_cannot_be_set_below_what_is_reserved(inv, tmp_path: Path) -> None:
    inventory.service.run(inv, "reserve_inventory", "s1:r", ITEMS)
    with pytest.raises(BusinessError, match="hold 3"):
        inventory.set_stock(inv, "WIDGET", 2)
    inventory.set_stock(inv, "WIDGET", 20)
    assert inventory.list_stock(inv) == [
        {"sku": "WIDGET", "on_hand": 20, "available": 17, "reserved": 3}
    ]
