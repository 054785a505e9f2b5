"""The consistency audit: the orchestrator's store cross-checked against every service's.

It only reads. Each violation names the check, the saga (where there is one) and what is
wrong; an empty list means every order ended fully done or fully undone.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from saga_app.app import configured
from saga_core import database
from saga_core.config import Settings
from saga_core.database import Location, Row
from saga_store import TERMINAL_STATES, open_reader, queries


@dataclass(frozen=True)
class Violation:
    check: str
    saga_id: str | None
    message: str


@dataclass
class Report:
    sagas_by_state: dict[str, int]
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sagas_by_state": self.sagas_by_state,
            "violations": [asdict(v) for v in self.violations],
        }


def rows(where: Location, sql: str, parameters: tuple[Any, ...] = ()) -> list[Row]:
    """Rows of ``sql`` in the database at ``where``; none where the database or table is
    not there yet (a service that never ran holds nothing)."""
    if where.absent:
        return []
    conn = database.connect(where, readonly=True)
    try:
        return list(conn.execute(sql, parameters).fetchall())
    except Exception as exc:
        if database.missing_table(exc):
            return []
        raise
    finally:
        conn.close()


def _saga_store(where: Location) -> tuple[list[Row], set[str]] | None:
    """Every saga, and those that raised an alert; None where no store is there."""
    if where.absent:
        return None
    conn = open_reader(where)
    try:
        return queries.saga_summaries(conn), queries.alerted_saga_ids(conn)
    except Exception as exc:
        if database.missing_table(exc):
            return None
        raise
    finally:
        conn.close()


def audit(
    system: Settings | Path, settle_seconds: float = 60.0, now: float | None = None
) -> Report:
    """Audit the system whose databases ``system`` names (or the one whose SQLite files are
    in the data directory ``system``)."""
    settings = configured(
        system if isinstance(system, Settings) else Settings(data_dir=Path(system))
    )
    db = settings.service_database
    now = time.time() if now is None else now
    store = _saga_store(settings.store())
    if store is None:
        # an audit that finds nothing to check has checked nothing: a wrong data directory
        # or database URL must not pass for a clean system
        message = f"no saga store at {settings.store()}: nothing to audit"
        return Report({}, [Violation("store", None, message)])
    sagas, alerted = store
    report = Report(dict(Counter(r["state"] for r in sagas)))
    bad = report.violations.append
    if not sagas:
        bad(Violation("store", None, "the saga store holds no saga: nothing to audit"))

    by_ref: dict[str, Row] = {}
    orders: dict[str, dict[str, Any]] = {}
    for row in sagas:
        order = json.loads(row["input"])
        orders[row["id"]] = order
        by_ref[str(order.get("order_id"))] = row

    # what each service holds, per order reference
    held = Counter(
        r["reference"]
        for r in rows(db("inventory"), "SELECT reference FROM reservations WHERE state = 'held'")
    )
    charges = rows(
        db("payment"),
        "SELECT reference, amount_cents, currency, state, "
        "(SELECT COALESCE(SUM(amount_cents), 0) FROM refunds "
        " WHERE charge_id = charges.id) AS refunded FROM charges",
    )
    charged = Counter(r["reference"] for r in charges if r["refunded"] < r["amount_cents"])
    shipments = Counter(
        r["reference"]
        for r in rows(db("shipping"), "SELECT reference FROM shipments WHERE state = 'created'")
    )
    mails = Counter(
        r["reference"] for r in rows(db("notification"), "SELECT reference FROM outbox")
    )

    for row in sagas:
        sid, state, ref = row["id"], row["state"], str(orders[row["id"]].get("order_id"))
        live = {
            "live reservations": held[ref],
            "unrefunded charges": charged[ref],
            "live shipments": shipments[ref],
        }
        if state not in TERMINAL_STATES:
            age = now - datetime.fromisoformat(row["created_at"]).timestamp()
            if age > settle_seconds:
                bad(Violation("settled", sid, f"still {state} after {age:.0f}s"))
        elif state == "completed":
            wrong = {k: n for k, n in live.items() if n != 1}
            if wrong:
                bad(Violation("completed", sid, f"completed but holds {_say(wrong)} (want 1 each)"))
            if mails[ref] > 1:
                bad(Violation("completed", sid, f"{mails[ref]} confirmations sent"))
        elif state == "compensated":
            left = {k: n for k, n in live.items() if n}
            if left:
                bad(Violation("compensated", sid, f"compensated but holds {_say(left)}"))
        elif sid not in alerted:
            bad(Violation("alerted", sid, "failed with no alert"))

    _check_stock(db("inventory"), bad)
    _check_money(sagas, orders, charges, bad)
    _check_strays(settings, by_ref, {r["id"] for r in sagas}, bad)
    return report


def _say(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items())


def _check_stock(inventory: Location, bad: Any) -> None:
    reserved: dict[str, int] = defaultdict(int)
    for r in rows(inventory, "SELECT items FROM reservations WHERE state = 'held'"):
        for item in json.loads(r["items"]):
            reserved[item["sku"]] += item["quantity"]
    for r in rows(inventory, "SELECT sku, on_hand, available FROM stock"):
        if r["available"] + reserved[r["sku"]] != r["on_hand"]:
            bad(
                Violation(
                    "stock",
                    None,
                    f"{r['sku']}: on hand {r['on_hand']} but available "
                    f"{r['available']} + reserved {reserved[r['sku']]}",
                )
            )


def _check_money(
    sagas: list[Row],
    orders: dict[str, dict[str, Any]],
    charges: list[Row],
    bad: Any,
) -> None:
    # A failed saga may keep a charge its refund could not undo: its alert covers it.
    failed_refs = {str(orders[r["id"]].get("order_id")) for r in sagas if r["state"] == "failed"}
    kept: Counter[str] = Counter()
    for c in charges:
        if c["reference"] not in failed_refs:
            kept[c["currency"]] += c["amount_cents"] - c["refunded"]
    owed: Counter[str] = Counter()
    for r in sagas:
        if r["state"] == "completed":
            order = orders[r["id"]]
            owed[order["currency"]] += order["amount_cents"]
    for currency in set(kept) | set(owed):
        if kept[currency] != owed[currency]:
            bad(
                Violation(
                    "money",
                    None,
                    f"{currency}: charges less refunds {kept[currency]} "
                    f"!= completed orders {owed[currency]}",
                )
            )


def _check_strays(settings: Settings, by_ref: dict[str, Row], saga_ids: set[str], bad: Any) -> None:
    records = {
        "reservation": ("inventory", "SELECT reference FROM reservations"),
        "charge": ("payment", "SELECT reference FROM charges"),
        "shipment": ("shipping", "SELECT reference FROM shipments"),
        "confirmation": ("notification", "SELECT reference FROM outbox"),
    }
    for what, (db, sql) in records.items():
        counts = Counter(r["reference"] for r in rows(settings.service_database(db), sql))
        for ref, n in counts.items():
            saga = by_ref.get(ref)
            if saga is None:
                bad(Violation("strays", None, f"a {what} for {ref!r}, which no saga knows"))
            elif n > 1:
                bad(
                    Violation(
                        "once",
                        saga["id"],
                        f"{n} {what}s for one order: an idempotency key took effect twice",
                    )
                )
    for db in settings.services:
        for r in rows(settings.service_database(db), "SELECT key FROM idempotency"):
            saga_id = str(r["key"]).split(":", 1)[0]
            if saga_id not in saga_ids:
                bad(Violation("strays", None, f"{db}: idempotency key {r['key']!r} of no saga"))
