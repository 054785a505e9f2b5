"""The notification service: confirmations written to an outbox table (no mail server)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saga_app import Connection, Service

service = Service(
    "notification", migrations=Path(__file__).parent / "migrations" / "notification", head="0001"
)


@service.action("send_confirmation")
def send(db: Connection, payload: dict[str, Any]) -> dict[str, Any]:
    message_id = "msg_" + uuid.uuid4().hex[:16]
    subject = f"Your order {payload['reference']} is on its way"
    body = (
        f"We charged {payload['amount_cents'] / 100:.2f} {payload['currency']} to the card "
        f"ending {payload['card_last4']}. Tracking number: {payload['tracking_number']}."
    )
    db.execute(
        "INSERT INTO outbox (id, reference, recipient, subject, body, sent_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            message_id,
            payload["reference"],
            payload["to"],
            subject,
            body,
            datetime.now(UTC).isoformat(timespec="seconds"),
        ),
    )
    return {"message_id": message_id}
