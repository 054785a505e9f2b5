"""Test helpers: orders, and what the services hold for an order (as a user would check)."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from order_app import app as ORDER_APP
from order_app.order import EXAMPLE_ORDER
from saga_app.invariants import Stores
from saga_core.config import Settings
from saga_core.signing import CLIENT
from saga_store import SagaState, SagaView, StepState
from saga_tools.cluster import saga_command

BASE_ORDER: dict[str, Any] = {
    **EXAMPLE_ORDER,
    "order_id": "ORD-1",
    "card_number": "4242424242424242",
}

STOCK = {"WIDGET": 10, "GADGET": 5}

#: A trip, as the example's saga (examples/trip) takes one.
TRIP = {
    "trip_id": "T-1",
    "traveller": "Ada Lovelace",
    "flight": "LH 2024",
    "hotel": "Hotel Adlon",
    "car": "compact",
    "amount_cents": 125_000,
}

#: The built-in app's services by name, each operation's service, and its sagas.
SERVICES = {service.name: service for service in ORDER_APP.services}
OPERATIONS = {op: service for service in ORDER_APP.services for op in service.operations}
DEFINITIONS = ORDER_APP.definitions
#: Who signs in it: each service, and the clients.
IDENTITIES = (*ORDER_APP.service_names, CLIENT)

# What the services hold for a completed order: one of each, nothing undone.
ONE_OF_EACH = {
    "reservations_held": 1,
    "reservations_released": 0,
    "charges": 1,
    "charges_live": 1,
    "refunds": 0,
    "shipments": 1,
    "shipments_live": 1,
    "confirmations": 1,
}


def signed(settings: Settings, kind: str, wire: dict[str, Any], signer: str) -> dict[str, Any]:
    """``wire`` signed as ``signer`` with the system's keys (as it is where signing is off)."""
    return settings.keyring().sign(kind, wire, [signer])


def make_order(order_id: str = "ORD-1", **changes: Any) -> dict[str, Any]:
    order = copy.deepcopy(BASE_ORDER)
    order["order_id"] = order_id
    order.update(changes)
    return order


def _db(data_dir: Path, service: str) -> sqlite3.Connection:
    conn = sqlite3.connect(data_dir / f"{service}.db")
    conn.row_factory = sqlite3.Row
    return conn


def service_records(system: Settings | Path, order_id: str) -> dict[str, Any]:
    """Live and undone records of each service for one order, in the databases of the
    system ``system`` names (or in the SQLite files of the data directory ``system``)."""
    settings = system if isinstance(system, Settings) else Settings(data_dir=system)

    stores = Stores([], settings.service_database)

    def count(service: str, sql: str) -> int:
        found = stores.rows(service, sql, (order_id,))
        return int(found[0][0]) if found else 0  # none: nothing ran there yet

    return {
        "reservations_held": count(
            "inventory", "SELECT COUNT(*) FROM reservations WHERE reference = ? AND state = 'held'"
        ),
        "reservations_released": count(
            "inventory",
            "SELECT COUNT(*) FROM reservations WHERE reference = ? AND state = 'released'",
        ),
        "charges": count("payment", "SELECT COUNT(*) FROM charges WHERE reference = ?"),
        "charges_live": count(
            "payment", "SELECT COUNT(*) FROM charges WHERE reference = ? AND state = 'charged'"
        ),
        "refunds": count(
            "payment",
            "SELECT COUNT(*) FROM refunds JOIN charges ON charges.id = refunds.charge_id "
            "WHERE charges.reference = ?",
        ),
        "shipments": count("shipping", "SELECT COUNT(*) FROM shipments WHERE reference = ?"),
        "shipments_live": count(
            "shipping",
            "SELECT COUNT(*) FROM shipments WHERE reference = ? AND state = 'created'",
        ),
        "confirmations": count("notification", "SELECT COUNT(*) FROM outbox WHERE reference = ?"),
    }


def available(data_dir: Path, sku: str) -> int:
    conn = _db(data_dir, "inventory")
    try:
        return int(conn.execute("SELECT available FROM stock WHERE sku = ?", (sku,)).fetchone()[0])
    finally:
        conn.close()


def all_text_of(data_dir: Path) -> str:
    """Every byte the system wrote under the data dir, as text (to look for card numbers)."""
    chunks = []
    for path in data_dir.rglob("*"):
        if path.is_file():
            chunks.append(path.read_bytes().decode("latin-1"))
    return "\n".join(chunks)


#: A card the payment service declines (a business failure, never retried).
DECLINED_CARD = "4000000000000002"


def assert_declined_and_undone(view: SagaView, data_dir: Path, order_id: str) -> None:
    """The order's card was declined: its reservation released, nothing charged."""
    assert view.state is SagaState.COMPENSATED
    assert view.step("charge_payment").state is StepState.FAILED
    assert view.step("charge_payment").error == "card declined"
    assert view.step("reserve_inventory").state is StepState.COMPENSATED
    records = service_records(data_dir, order_id)
    assert records["charges"] == 0 and records["reservations_released"] == 1
    assert available(data_dir, "WIDGET") == STOCK["WIDGET"]


def declared_queues(amqp_url: str, queues: list[str]) -> list[str]:
    """Which of ``queues`` RabbitMQ holds (a passive declaration finds them)."""
    from amqp.exceptions import NotFound
    from kombu import Connection

    found = []
    with Connection(amqp_url) as conn:
        for queue in queues:
            try:
                conn.channel().queue_declare(queue, passive=True)
            except NotFound:
                continue
            found.append(queue)
    return found


def declared_queue_type(amqp_url: str, queue: str) -> str:
    """The type RabbitMQ holds ``queue`` as (``classic``, ``quorum``…): a declaration as
    classic is accepted only by a classic queue, and any other names its own type in the
    refusal."""
    import re

    import amqp
    from kombu import Connection

    with Connection(amqp_url) as conn:
        conn.default_channel.queue_declare(queue, passive=True)  # it exists
        try:
            conn.channel().queue_declare(
                queue, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"}
            )
        except amqp.exceptions.PreconditionFailed as exc:
            found = re.search(r"current is '(\w+)", str(exc))
            assert found, exc
            return found.group(1)
    return "classic"


def clean_chaos_run(env: Mapping[str, str], *args: str) -> dict[str, Any]:
    """``saga chaos ARGS --json`` in the environment ``env`` adds, its report once it has
    ended clean: no violation, nothing unsettled (else the assertion says why)."""
    result = subprocess.run(
        [*saga_command("chaos", *args), "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=230,
    )
    report: dict[str, Any] = json.loads(result.stdout[result.stdout.index("{") :])
    assert result.returncode == 0, (report, result.stderr[-3000:])
    assert report["ok"] and report["violations"] == [] and report["unsettled"] == 0
    return report
