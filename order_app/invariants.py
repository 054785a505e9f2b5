"""What the order saga promises beyond what holds for every saga (``saga audit`` checks
both): each ended order holds exactly what its state says in every service's own tables,
the stock adds up, the money balances, and no service holds a record of an order no saga
knows, or two of one."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from order_app.order import NAME
from saga_app import Ended, Stores, Violation


def _reference(saga: Ended) -> str:
    return str(saga.input.get("order_id"))


def orders_hold_what_their_state_says(stores: Stores) -> Iterator[Violation]:
    """A completed order holds one reservation, one unrefunded charge and one shipment, and
    at most one confirmation; a compensated one holds none of the three."""
    held = Counter(
        r["reference"]
        for r in stores.rows("inventory", "SELECT reference FROM reservations WHERE state = 'held'")
    )
    charged = Counter(r["reference"] for r in _charges(stores) if r["refunded"] < r["amount_cents"])
    shipments = Counter(
        r["reference"]
        for r in stores.rows("shipping", "SELECT reference FROM shipments WHERE state = 'created'")
    )
    mails = Counter(
        r["reference"] for r in stores.rows("notification", "SELECT reference FROM outbox")
    )
    for saga in stores.of(NAME):
        ref = _reference(saga)
        live = {
            "live reservations": held[ref],
            "unrefunded charges": charged[ref],
            "live shipments": shipments[ref],
        }
        if saga.state == "completed":
            wrong = {k: n for k, n in live.items() if n != 1}
            if wrong:
                yield Violation(
                    "completed", saga.id, f"completed but holds {_say(wrong)} (want 1 each)"
                )
            if mails[ref] > 1:
                yield Violation("completed", saga.id, f"{mails[ref]} confirmations sent")
        elif saga.state == "compensated":
            left = {k: n for k, n in live.items() if n}
            if left:
                yield Violation("compensated", saga.id, f"compensated but holds {_say(left)}")


def stock_adds_up(stores: Stores) -> Iterator[Violation]:
    """For every SKU: on hand = available + what live reservations hold."""
    reserved: dict[str, int] = defaultdict(int)
    for r in stores.rows("inventory", "SELECT items FROM reservations WHERE state = 'held'"):
        for item in json.loads(r["items"]):
            reserved[item["sku"]] += item["quantity"]
    for r in stores.rows("inventory", "SELECT sku, on_hand, available FROM stock"):
        if r["available"] + reserved[r["sku"]] != r["on_hand"]:
            yield Violation(
                "stock",
                None,
                f"{r['sku']}: on hand {r['on_hand']} but available "
                f"{r['available']} + reserved {reserved[r['sku']]}",
            )


def money_balances(stores: Stores) -> Iterator[Violation]:
    """Per currency: charges less refunds = the completed orders' amounts (a failed order
    may keep a charge its refund could not undo: its alert covers it)."""
    orders = stores.of(NAME)
    failed = {_reference(s) for s in orders if s.state == "failed"}
    kept: Counter[str] = Counter()
    for c in _charges(stores):
        if c["reference"] not in failed:
            kept[c["currency"]] += c["amount_cents"] - c["refunded"]
    owed: Counter[str] = Counter()
    for saga in orders:
        if saga.state == "completed":
            owed[saga.input["currency"]] += saga.input["amount_cents"]
    for currency in set(kept) | set(owed):
        if kept[currency] != owed[currency]:
            yield Violation(
                "money",
                None,
                f"{currency}: charges less refunds {kept[currency]} "
                f"!= completed orders {owed[currency]}",
            )


def one_record_per_order(stores: Stores) -> Iterator[Violation]:
    """Every reservation, charge, shipment and confirmation belongs to an order a saga knows,
    one of each per order."""
    by_ref = {_reference(s): s for s in stores.of(NAME)}
    records = {
        "reservation": ("inventory", "SELECT reference FROM reservations"),
        "charge": ("payment", "SELECT reference FROM charges"),
        "shipment": ("shipping", "SELECT reference FROM shipments"),
        "confirmation": ("notification", "SELECT reference FROM outbox"),
    }
    for what, (service, sql) in records.items():
        for ref, n in Counter(r["reference"] for r in stores.rows(service, sql)).items():
            saga = by_ref.get(ref)
            if saga is None:
                yield Violation("strays", None, f"a {what} for {ref!r}, which no saga knows")
            elif n > 1:
                yield Violation(
                    "once",
                    saga.id,
                    f"{n} {what}s for one order: an idempotency key took effect twice",
                )


def _charges(stores: Stores) -> list[Any]:
    return stores.rows(
        "payment",
        "SELECT reference, amount_cents, currency, state, "
        "(SELECT COALESCE(SUM(amount_cents), 0) FROM refunds "
        " WHERE charge_id = charges.id) AS refunded FROM charges",
    )


def _say(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items())


INVARIANTS = (
    orders_hold_what_their_state_says,
    stock_adds_up,
    money_balances,
    one_record_per_order,
)
