"""Made-up orders for ``saga chaos`` and ``saga demo``, and the stock they draw on."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from order_app import inventory
from saga_app import Connection

#: GIZMO is scarce, so that some orders run out of it.
SKUS = {"WIDGET": 100_000, "GADGET": 100_000, "GIZMO": 40}
DECLINED_CARD = "4000000000000002"


def order(n: int, rng: random.Random) -> dict[str, Any]:
    """The ``n``-th order: one to three of a SKU, a card declined now and then."""
    sku = rng.choices(list(SKUS), weights=[60, 37, 3])[0]
    quantity = rng.randint(1, 3)
    return {
        "order_id": f"order-{n:06d}",
        "customer_email": f"c{n}@example.com",
        "items": [{"sku": sku, "quantity": quantity}],
        "amount_cents": quantity * 1250,
        "currency": rng.choice(["EUR", "USD"]),
        "card_number": "4242424242424242" if rng.random() > 0.03 else DECLINED_CARD,
        "shipping_address": {
            "name": f"C {n}",
            "line1": f"{n} Chaos Road",
            "city": "Lyon",
            "postal_code": "69001",
            "country": "FR",
        },
    }


def stock(database: Callable[[str], Connection]) -> None:
    """The stock the sample orders draw on (SKUs stocked already are set again)."""
    db = database(inventory.service.name)
    for sku, quantity in SKUS.items():
        inventory.set_stock(db, sku, quantity)
