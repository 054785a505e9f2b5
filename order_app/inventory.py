"""The inventory service: stock per SKU and reservations against it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from saga_app import BusinessError, Connection, Service, for_update, transaction

service = Service(
    "inventory", migrations=Path(__file__).parent / "migrations" / "inventory", head="0001"
)


@service.action("reserve_inventory")
def reserve(db: Connection, payload: dict[str, Any]) -> dict[str, Any]:
    items = payload["items"]
    # Locked, in SKU order: replicas reserving the same SKU take turns (never both the
    # last unit), and two orders never wait on each other in a circle.
    for item in sorted(items, key=lambda item: str(item["sku"])):
        row = db.execute(
            f"SELECT available FROM stock WHERE sku = ?{for_update(db)}", (item["sku"],)
        ).fetchone()
        if row is None:
            raise BusinessError(f"unknown SKU {item['sku']!r}")
        if row["available"] < item["quantity"]:
            raise BusinessError(
                f"out of stock: {item['sku']!r} has {row['available']}, "
                f"{item['quantity']} requested"
            )
        db.execute(
            "UPDATE stock SET available = available - ? WHERE sku = ?",
            (item["quantity"], item["sku"]),
        )
    reservation_id = "res_" + uuid.uuid4().hex[:16]
    db.execute(
        "INSERT INTO reservations (id, reference, items, state) VALUES (?, ?, ?, 'held')",
        (reservation_id, payload["reference"], json.dumps(items)),
    )
    return {"reservation_id": reservation_id}


@service.compensation("release_inventory", undoes="reserve_inventory")
def release(db: Connection, payload: dict[str, Any], reserved: dict[str, Any]) -> dict[str, Any]:
    row = db.execute(
        "SELECT items FROM reservations WHERE id = ? AND state = 'held'",
        (reserved["reservation_id"],),
    ).fetchone()
    if row is not None:
        for item in json.loads(row["items"]):
            db.execute(
                "UPDATE stock SET available = available + ? WHERE sku = ?",
                (item["quantity"], item["sku"]),
            )
        db.execute(
            "UPDATE reservations SET state = 'released' WHERE id = ?",
            (reserved["reservation_id"],),
        )
    return {"released": reserved["reservation_id"]}


def set_stock(db: Connection, sku: str, on_hand: int) -> None:
    """Set what the warehouse holds of ``sku``; what is available follows, less live
    reservations. Refused where live reservations hold more than ``on_hand``."""
    if on_hand < 0:
        raise BusinessError(f"stock for {sku!r} cannot be negative")
    with transaction(db):
        row = db.execute(
            f"SELECT on_hand, available FROM stock WHERE sku = ?{for_update(db)}", (sku,)
        ).fetchone()
        held = (row["on_hand"] - row["available"]) if row else 0
        if on_hand < held:
            raise BusinessError(f"{sku!r}: live reservations hold {held}, cannot set {on_hand}")
        db.execute(
            "INSERT INTO stock (sku, on_hand, available) VALUES (?, ?, ?) "
            "ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, "
            "available = excluded.available",
            (sku, on_hand, on_hand - held),
        )


def list_stock(db: Connection) -> list[dict[str, Any]]:
    rows = db.execute("SELECT sku, on_hand, available FROM stock ORDER BY sku").fetchall()
    return [
        {
            "sku": r["sku"],
            "on_hand": r["on_hand"],
            "available": r["available"],
            "reserved": r["on_hand"] - r["available"],
        }
        for r in rows
    ]
