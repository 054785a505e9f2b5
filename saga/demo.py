"""The demo: start the four workers and the orchestrator, seed stock, submit a batch of
orders with random failures, and print each outcome as it comes."""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import Counter
from typing import Any

import orchestrator
from saga import audit, broker
from saga.cluster import Cluster
from saga.config import FailureRates, Settings
from saga_store import open_store, queries
from workers import inventory

STOCK = {"WIDGET": 500, "GADGET": 200, "GIZMO": 2}
GOOD_CARDS = ["4242424242424242", "5555555555554444"]


def _order(n: int, rng: random.Random) -> dict[str, Any]:
    sku = rng.choice(["WIDGET", "GADGET"])
    quantity = rng.randint(1, 3)
    return {
        "order_id": f"demo-{n:04d}",
        "customer_email": f"customer{n}@example.com",
        "items": [{"sku": sku, "quantity": quantity}],
        "amount_cents": quantity * 1999,
        "currency": "EUR",
        "card_number": rng.choice(GOOD_CARDS),
        "shipping_address": {
            "name": f"Customer {n}",
            "line1": f"{n} Main Street",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
        },
    }


def make_orders(count: int, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """A batch of orders: mostly ordinary ones, and one of each deterministic fault."""
    rng = random.Random(seed)
    batch = [("ordinary", _order(n, rng)) for n in range(1, count + 1)]
    special: list[tuple[str, dict[str, Any]]] = [
        ("declined card", {"card_number": "4000000000000002"}),
        ("unknown SKU", {"items": [{"sku": "NO-SUCH-SKU", "quantity": 1}]}),
        ("more than the stock", {"items": [{"sku": "GIZMO", "quantity": 5}]}),
        ("email keeps failing", {"faults": {"send_confirmation": {"fail_transient": 100}}}),
        (
            "refund keeps failing",
            {
                "faults": {
                    "create_shipment": {"fail_business": True},
                    "refund_payment": {"fail_transient": 100},
                }
            },
        ),
    ]
    for i, (label, change) in enumerate(special[: max(0, count)]):
        index = (i * 5 + 2) % len(batch)
        batch[index] = (label, {**batch[index][1], **change})
    return batch


def run(
    settings: Settings,
    orders: int = 24,
    transient: float = 0.1,
    business: float = 0.03,
    timeout: float = 180.0,
) -> int:
    # The demo prints its own report; the submitting side's per-saga log lines would bury it.
    logging.getLogger("saga.orchestrator").setLevel(logging.WARNING)
    data_dir = settings.data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    url, owned = broker.ensure(settings.broker_url, settings.data_dir)
    print(f"broker: {url}" + (" (started for this demo)" if owned else ""))
    settings = settings.with_(
        broker_url=url,
        data_dir=data_dir,
        queue_prefix=f"{settings.queue_prefix}demo.",
        failure_rates={"*": FailureRates(transient=transient, business=business)},
    )
    cluster = Cluster(settings).prepare(STOCK)
    try:
        cluster.start()
        logs = data_dir / "logs"
        print(f"started {len(cluster.workers)} workers and the orchestrator; logs in {logs}")
        print(f"random failures per step: transient {transient:.0%}, business {business:.0%}\n")
        return _run_batch(settings, make_orders(orders), timeout)
    finally:
        cluster.stop()
        if owned is not None:
            owned.stop()


def _run_batch(settings: Settings, batch: list[tuple[str, dict[str, Any]]], timeout: float) -> int:
    started = time.monotonic()
    pending: dict[str, tuple[str, str, float]] = {}
    for label, order in batch:
        saga_id = orchestrator.submit(order, settings=settings)
        pending[saga_id] = (order["order_id"], label, time.monotonic())
    store = open_store(settings.path("sagas.db"))
    results: Counter[str] = Counter()
    deadline = started + timeout
    while pending and time.monotonic() < deadline:
        for saga_id in list(pending):
            view = queries.get_saga(store, saga_id)
            if not view.state.terminal:
                continue
            order_id, label, t0 = pending.pop(saga_id)
            results[view.state.value] += 1
            why = view.error or ""
            email = view.step("send_confirmation")
            if view.state == "completed" and email.state == "failed":
                why = f"email not sent: {email.error}"
            print(
                f"  {order_id}  {view.state.value:<12} {time.monotonic() - t0:5.1f}s  "
                f"{label:<21} {why}"
            )
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    print(
        f"\n{len(batch) - len(pending)} of {len(batch)} sagas ended in {elapsed:.1f}s: "
        + ", ".join(f"{n} {state}" for state, n in sorted(results.items()))
    )
    for alert in queries.alerts(store):
        print(f"ALERT saga {alert.saga_id}: compensation of {alert.step} failed: {alert.error}")
    print("\nstock after the batch:")
    for row in inventory.list_stock(inventory.service.database(settings.data_dir)):
        print(
            f"  {row['sku']:<8} on hand {row['on_hand']:>4}  reserved {row['reserved']:>4}  "
            f"available {row['available']:>4}"
        )
    if pending:
        print(f"\n{len(pending)} saga(s) had not ended after {timeout:.0f}s")
        return 1
    report = audit.audit(settings.data_dir)
    print(f"\naudit: {'clean' if report.ok else f'{len(report.violations)} violation(s)'}")
    for v in report.violations:
        print(f"  [{v.check}] {v.saga_id or ''} {v.message}")
    return 0 if report.ok else 1
