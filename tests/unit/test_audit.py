"""The audit: clean after real saga runs, and each kind of violation found and named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saga_store import open_store
from saga_tools import audit
from tests.harness import Harness
from tests.helpers import make_order


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    """Four sagas run to their end: completed, compensated, failed with an alert, and
    completed with its email failed."""
    h = Harness(tmp_path)
    h.completed = h.submit(make_order("OK"))  # type: ignore[attr-defined]
    h.compensated = h.submit(  # type: ignore[attr-defined]
        make_order("NO", card_number="4000000000000002")
    )
    h.failed = h.submit(  # type: ignore[attr-defined]
        make_order("BAD"),
        faults={
            "create_shipment": {"fail_business": True},
            "refund_payment": {"fail_transient": 9},
        },
    )
    h.submit(make_order("MUTE"), faults={"send_confirmation": {"fail_transient": 9}})
    h.run_all()
    return h


def violations(h: Harness) -> list[tuple[str, str | None]]:
    return [(v.check, v.saga_id) for v in audit.audit(h.settings.data_dir).violations]


def sql(h: Harness, service: str, statement: str) -> None:
    conn = sqlite3.connect(h.settings.data_dir / f"{service}.db")
    conn.execute(statement)
    conn.commit()
    conn.close()


def test_real_runs_are_clean(h: Harness) -> None:
    report = audit.audit(h.settings.data_dir)
    assert report.ok, report.violations
    assert report.sagas_by_state == {"completed": 2, "compensated": 1, "failed": 1}


def test_unsettled_saga(h: Harness) -> None:
    sid = h.submit(make_order("SLOW"))
    assert audit.audit(h.settings.data_dir, settle_seconds=60, now=h.clock.now).ok
    late = audit.audit(h.settings.data_dir, settle_seconds=60, now=h.clock.now + 3600)
    assert [(v.check, v.saga_id) for v in late.violations] == [("settled", sid)]


def test_compensated_saga_still_holding_stock(h: Harness) -> None:
    sql(h, "inventory", "UPDATE reservations SET state = 'held' WHERE reference = 'NO'")
    assert ("compensated", h.compensated) in violations(h)  # type: ignore[attr-defined]
    assert ("stock", None) in violations(h)


def test_completed_saga_missing_its_shipment(h: Harness) -> None:
    sql(h, "shipping", "UPDATE shipments SET state = 'cancelled' WHERE reference = 'OK'")
    assert violations(h) == [("completed", h.completed)]  # type: ignore[attr-defined]


def test_failed_saga_without_an_alert(h: Harness) -> None:
    h.engine.db.execute("DELETE FROM alerts")
    assert violations(h) == [("alerted", h.failed)]  # type: ignore[attr-defined]


def test_money_that_does_not_balance(h: Harness) -> None:
    sql(h, "payment", "UPDATE charges SET amount_cents = amount_cents + 1 WHERE reference = 'OK'")
    assert ("money", None) in violations(h)


def test_effect_twice_and_stray_records(h: Harness) -> None:
    sql(
        h,
        "shipping",
        "INSERT INTO shipments SELECT 'x' || id, reference, address, items, "
        "'T' || tracking_number, state FROM shipments WHERE reference = 'OK'",
    )
    sql(h, "notification", "INSERT INTO outbox VALUES ('m', 'GHOST', 'a@b.c', 's', 'b', 't')")
    found = violations(h)
    assert ("once", h.completed) in found  # type: ignore[attr-defined]
    assert ("strays", None) in found


def test_a_missing_or_empty_store_is_not_clean(tmp_path: Path) -> None:
    # a data directory where nothing ever ran: a wrong SAGA_DATA_DIR, say
    report = audit.audit(tmp_path / "nothing-here")
    assert not report.ok
    assert report.violations[0].check == "store" and "no saga store" in report.violations[0].message
    # a store made, but never given a saga
    open_store(tmp_path / "empty" / "sagas.db").close()
    report = audit.audit(tmp_path / "empty")
    assert [(v.check, v.message) for v in report.violations] == [
        ("store", "the saga store holds no saga: nothing to audit")
    ]


# --- what holds for every saga, read from the ledgers alone ---------------------------------


def test_a_completed_saga_whose_effect_is_missing_from_a_ledger(h: Harness) -> None:
    sid = h.completed  # type: ignore[attr-defined]
    sql(h, "shipping", f"DELETE FROM idempotency WHERE key = '{sid}:create_shipment'")
    assert violations(h) == [("effects", sid)]


def test_a_compensated_step_not_undone_in_its_ledger(h: Harness) -> None:
    sid = h.compensated  # type: ignore[attr-defined]
    sql(
        h,
        "inventory",
        f"UPDATE idempotency SET compensation_status = NULL WHERE key = '{sid}:reserve_inventory'",
    )
    assert sorted(violations(h)) == [("effects", sid), ("undone", sid)]


def test_a_ledger_key_of_no_saga(h: Harness) -> None:
    sql(
        h,
        "payment",
        "INSERT INTO idempotency (key, operation, action_status, action_result, updated_at) "
        "VALUES ('nobody:charge_payment', 'charge_payment', 'done', '{}', 'now')",
    )
    assert ("strays", None) in violations(h)


def test_a_saga_on_a_version_the_app_lacks(h: Harness) -> None:
    sid = h.completed  # type: ignore[attr-defined]
    h.engine.db.execute("UPDATE sagas SET definition = 'order@000000000000' WHERE id = ?", (sid,))
    assert violations(h) == [("version", sid)]
