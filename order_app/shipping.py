"""The shipping service: shipments with a tracking number."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from saga_app import Connection, Service

service = Service(
    "shipping", migrations=Path(__file__).parent / "migrations" / "shipping", head="0001"
)


@service.action("create_shipment")
def create(db: Connection, payload: dict[str, Any]) -> dict[str, Any]:
    shipment_id = "shp_" + uuid.uuid4().hex[:16]
    tracking = "TRK" + uuid.uuid4().hex[:12].upper()
    db.execute(
        "INSERT INTO shipments (id, reference, address, items, tracking_number, state) "
        "VALUES (?, ?, ?, ?, ?, 'created')",
        (
            shipment_id,
            payload["reference"],
            json.dumps(payload["address"]),
            json.dumps(payload["items"]),
            tracking,
        ),
    )
    return {"shipment_id": shipment_id, "tracking_number": tracking}


@service.compensation("cancel_shipment", undoes="create_shipment")
def cancel(db: Connection, payload: dict[str, Any], created: dict[str, Any]) -> dict[str, Any]:
    db.execute("UPDATE shipments SET state = 'cancelled' WHERE id = ?", (created["shipment_id"],))
    return {"cancelled": created["shipment_id"]}
