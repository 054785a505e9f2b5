"""The consistency audit: the orchestrator's store cross-checked against every service's.

It only reads. What holds for every saga is checked from the saga store and the services'
idempotency ledgers alone (a step's effect is in its service's ledger under the key
``saga_id:step``, with whether it was undone): a saga that ended completed holds the
effect of every step that is not best-effort, one that ended compensated holds none it
could undo, a step the store calls compensated was undone in its service, every key in a
ledger belongs to a saga, and every saga ends (or has an alert, where it failed). A ledger
keeps one row per key, so no key can take effect twice there; the app's own invariants
(``App(invariants=...)``) check its services' tables and the world outside. Each violation
names the check, the saga (where there is one) and what is wrong; an empty list means
every saga ended fully done or fully undone.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from saga_app.app import App, configured
from saga_app.app import of as app_of
from saga_app.invariants import Stores, Violation
from saga_core import database
from saga_core.config import Settings
from saga_core.database import Location, Row
from saga_store import TERMINAL_STATES, open_reader, queries

__all__ = ["Report", "Violation", "audit"]


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


def _saga_store(where: Location) -> tuple[list[Row], set[str], dict[tuple[str, str], str]] | None:
    """Every saga, those that raised an alert, and every step's state; None where no store
    is there."""
    if where.absent:
        return None
    conn = open_reader(where)
    try:
        return (
            queries.saga_summaries(conn),
            queries.alerted_saga_ids(conn),
            queries.step_states(conn),
        )
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
    in the data directory ``system``), with the invariants of the app it runs."""
    settings = configured(
        system if isinstance(system, Settings) else Settings(data_dir=Path(system))
    )
    app = app_of(settings)
    now = time.time() if now is None else now
    store = _saga_store(settings.store())
    if store is None:
        # an audit that finds nothing to check has checked nothing: a wrong data directory
        # or database URL must not pass for a clean system
        message = f"no saga store at {settings.store()}: nothing to audit"
        return Report({}, [Violation("store", None, message)])
    rows, alerted, step_states = store
    report = Report(dict(Counter(r["state"] for r in rows)))
    bad = report.violations.append
    if not rows:
        bad(Violation("store", None, "the saga store holds no saga: nothing to audit"))
    stores = Stores(rows, settings.service_database)
    for saga in stores.sagas:
        if saga.state not in TERMINAL_STATES:
            age = now - datetime.fromisoformat(saga.created_at).timestamp()
            if age > settle_seconds:
                bad(Violation("settled", saga.id, f"still {saga.state} after {age:.0f}s"))
        elif saga.state == "failed" and saga.id not in alerted:
            bad(Violation("alerted", saga.id, "failed with no alert"))
    report.violations.extend(_ledger_checks(app, stores, rows, step_states))
    for invariant in app.invariants:
        report.violations.extend(invariant(stores))
    return report


def _ledger_checks(
    app: App, stores: Stores, rows: list[Row], step_states: dict[tuple[str, str], str]
) -> list[Violation]:
    """What every saga's end promises, read from the ledgers of the services it ran on."""
    found: list[Violation] = []
    bad = found.append
    ledgers = {
        service: {
            str(r["key"]): (r["action_status"], r["compensation_status"])
            for r in stores.rows(
                service, "SELECT key, action_status, compensation_status FROM idempotency"
            )
        }
        for service in app.service_names
    }
    ids = {saga.id for saga in stores.sagas}
    for service, ledger in ledgers.items():
        for key in ledger:
            if key.split(":", 1)[0] not in ids:
                bad(Violation("strays", None, f"{service}: idempotency key {key!r} of no saga"))
    stored = {r["id"]: r["definition"] for r in rows}
    for saga in stores.sagas:
        if saga.state not in TERMINAL_STATES:
            continue
        definition = app.definition_of(stored[saga.id])
        if definition is None:
            bad(Violation("version", saga.id, f"{stored[saga.id]}: a definition this app lacks"))
            continue
        for step in definition.steps:
            action, undo = ledgers.get(step.queue, {}).get(f"{saga.id}:{step.name}", (None, None))
            took, undone = action == "done", undo == "done"
            where = f"{step.name} in {step.queue}'s ledger"
            if saga.state == "completed" and not step.best_effort and not (took and not undone):
                what = "was undone" if undone else "never took effect"
                bad(Violation("effects", saga.id, f"completed, but {where} {what}"))
            elif saga.state == "compensated" and took and not undone and not step.best_effort:
                why = "" if step.compensation else " (it has no compensation)"
                bad(Violation("effects", saga.id, f"compensated, but {where} is not undone{why}"))
            state = step_states.get((saga.id, step.name))
            if state == "compensated" and took and not undone:
                bad(Violation("undone", saga.id, f"{step.name} compensated, but not in {where}"))
    return found
