"""The payment service: charges and refunds through the (simulated) card processor."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from order_app import card_processor
from saga_app import Connection, Service

service = Service(
    "payment", migrations=Path(__file__).parent / "migrations" / "payment", head="0002"
)


@service.action("charge_payment")
def charge(db: Connection, payload: dict[str, Any]) -> dict[str, Any]:
    card = payload["card"]
    card_processor.authorize(card["token"], payload["amount_cents"])
    charge_id = "ch_" + uuid.uuid4().hex[:16]
    db.execute(
        "INSERT INTO charges (id, reference, card_token, card_last4, amount_cents, currency, "
        "state) VALUES (?, ?, ?, ?, ?, ?, 'charged')",
        (
            charge_id,
            payload["reference"],
            card["token"],
            card["last4"],
            payload["amount_cents"],
            payload["currency"],
        ),
    )
    return {
        "charge_id": charge_id,
        "amount_cents": payload["amount_cents"],
        "card_last4": card["last4"],
    }


@service.compensation("refund_payment", undoes="charge_payment")
def refund(db: Connection, payload: dict[str, Any], charged: dict[str, Any]) -> dict[str, Any]:
    row = db.execute(
        "SELECT amount_cents FROM charges WHERE id = ? AND state = 'charged'",
        (charged["charge_id"],),
    ).fetchone()
    refund_id = None
    if row is not None:
        refund_id = "re_" + uuid.uuid4().hex[:16]
        db.execute(
            "INSERT INTO refunds (id, charge_id, amount_cents) VALUES (?, ?, ?)",
            (refund_id, charged["charge_id"], row["amount_cents"]),
        )
        db.execute("UPDATE charges SET state = 'refunded' WHERE id = ?", (charged["charge_id"],))
    return {"refund_id": refund_id, "charge_id": charged["charge_id"]}
