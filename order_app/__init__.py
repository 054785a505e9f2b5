"""The order saga, the built-in app: reserve the stock, charge the card, create the
shipment, send the confirmation; written with nothing but the public API (``saga_app``).

Every process loads it where ``SAGA_APP`` names no other app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from order_app import inventory, notification, payment, samples, shipping
from order_app.invariants import INVARIANTS
from order_app.order import EXAMPLE_ORDER, NAME, InvalidOrder, fingerprint, prepare
from saga_app import App, RetryPolicy, Saga, Step

STEP_RETRY = RetryPolicy(max_retries=3, backoff_base=0.2, backoff_max=5.0)
# A compensation must not give up lightly: giving up means a person is paged.
COMPENSATION_RETRY = RetryPolicy(max_retries=5, backoff_base=0.25, backoff_max=4.0)


def _reference(order: Mapping[str, Any]) -> str:
    return str(order["order_id"])


ORDER = Saga(
    NAME,
    input=prepare,
    sample=samples.order,
    fingerprint=fingerprint,
    steps=[
        Step(
            "reserve_inventory",
            inventory.service,
            "reserve_inventory",
            compensation="release_inventory",
            payload=lambda order, _: {"reference": _reference(order), "items": order["items"]},
            retry=STEP_RETRY,
            compensation_retry=COMPENSATION_RETRY,
        ),
        Step(
            "charge_payment",
            payment.service,
            "charge_payment",
            compensation="refund_payment",
            payload=lambda order, _: {
                "reference": _reference(order),
                "card": order["card"],
                "amount_cents": order["amount_cents"],
                "currency": order["currency"],
            },
            retry=STEP_RETRY,
            compensation_retry=COMPENSATION_RETRY,
        ),
        Step(
            "create_shipment",
            shipping.service,
            "create_shipment",
            compensation="cancel_shipment",
            payload=lambda order, _: {
                "reference": _reference(order),
                "address": order["shipping_address"],
                "items": order["items"],
            },
            retry=STEP_RETRY,
            compensation_retry=COMPENSATION_RETRY,
        ),
        Step(
            "send_confirmation",
            notification.service,
            "send_confirmation",
            payload=lambda order, done: {
                "reference": _reference(order),
                "to": order["customer_email"],
                "amount_cents": order["amount_cents"],
                "currency": order["currency"],
                "card_last4": order["card"]["last4"],
                "tracking_number": done["create_shipment"]["tracking_number"],
            },
            retry=STEP_RETRY,
            best_effort=True,
        ),
    ],
)

app = App(
    sagas=[ORDER],
    services=[inventory.service, payment.service, shipping.service, notification.service],
    invariants=INVARIANTS,
    setup=samples.stock,
)
#: The order saga as the engine runs it.
ORDER_SAGA = app.definitions[NAME]

__all__ = [
    "EXAMPLE_ORDER",
    "ORDER",
    "ORDER_SAGA",
    "InvalidOrder",
    "app",
    "fingerprint",
    "prepare",
]
