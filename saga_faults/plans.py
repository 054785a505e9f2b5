"""Fault plans: what should go wrong for one order, written by a test, the demo or a chaos
run before the order is submitted, and read by the processes of that system.

A plan never travels with the order, in a command or in the saga store: it sits in
``DATA_DIR/faults.db``, keyed by the order's reference (its ``order_id``, which every
command's payload carries), and only a process started with ``SAGA_FAULTS=1`` reads it.
A plan maps an operation (``charge_payment``, ``refund_payment``…) to what goes wrong there:

- ``fail_transient``: N — fail with a transient error on the first N tries of each delivery
- ``fail_business``: true — fail for a business reason (recorded, so every repeat agrees)
- ``crash_after_effect``: true — kill the worker process after the effect is committed and
  before the outcome is sent (once: the redelivered run finds the effect and replies)
- ``crash_before_effect``: true — kill the worker process before the effect, on every
  delivery: a poison message, given up after ``SAGA_MAX_DELIVERIES`` runs that never ended
- ``delay_seconds``: S — a slow step: wait S seconds before the effect, after touching
  ``DATA_DIR/running/OPERATION.KEY`` so that a test or a demo knows the step is under way
- ``pause_after_effect``: S — wait S seconds after the effect is committed and before the
  outcome is sent, after touching ``DATA_DIR/committed/OPERATION.KEY`` (once per key: the
  redelivered run replies at once), so that a kill from outside can land in that window

and ``"orchestrator": {"crash_at": "POINT:OPERATION"}`` kills the orchestrator once for the
order, at ``before_dispatch`` (the transition that sends OPERATION is stored, the command not
yet published) or ``after_dispatch`` (published; on RabbitMQ the outcome that led to it not
yet acknowledged, while on Redis the call that pushes the command acknowledges it too).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saga_core.database import transaction
from saga_core.sqlite import connect

#: Each fault word and the type of its value.
FAULT_FIELDS: dict[str, type] = {
    "fail_transient": int,
    "fail_business": bool,
    "crash_after_effect": bool,
    "crash_before_effect": bool,
    "delay_seconds": float,
    "pause_after_effect": float,
}
CRASH_POINTS = ("before_dispatch", "after_dispatch")
MAX_DELAY_SECONDS = 60

SCHEMA = "CREATE TABLE IF NOT EXISTS plans (reference TEXT PRIMARY KEY, plan TEXT NOT NULL)"


@dataclass(frozen=True)
class OperationFaults:
    """What goes wrong in one operation for one order (nothing, by default)."""

    fail_transient: int = 0
    fail_business: bool = False
    crash_after_effect: bool = False
    crash_before_effect: bool = False
    delay_seconds: float = 0.0
    pause_after_effect: float = 0.0


NO_FAULTS = OperationFaults()


class FaultPlans:
    """The fault plans of one system, in its data directory; safe to share between
    processes and threads (each thread opens its own connection)."""

    def __init__(self, data_dir: Path, operations: Collection[str] | None = None):
        """``operations``, where given, are the only names a plan may use."""
        self.path = Path(data_dir) / "faults.db"
        self.operations = operations
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
            conn.execute(SCHEMA)
        return conn

    def add(self, reference: str, plan: Mapping[str, Any]) -> None:
        """Record ``plan`` for the order ``reference``, checked first (``ValueError``
        naming the bad field); a plan recorded earlier for it is replaced."""
        self.check(plan)
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO plans (reference, plan) VALUES (?, ?) "
                "ON CONFLICT (reference) DO UPDATE SET plan = excluded.plan",
                (reference, json.dumps(plan)),
            )

    def get(self, reference: Any) -> dict[str, Any]:
        """The plan for ``reference``, or an empty one."""
        if not isinstance(reference, str):
            return {}
        row = self.db.execute("SELECT plan FROM plans WHERE reference = ?", (reference,)).fetchone()
        return json.loads(row["plan"]) if row else {}

    def for_operation(self, reference: Any, operation: str) -> OperationFaults:
        spec = self.get(reference).get(operation)
        return OperationFaults(**spec) if spec else NO_FAULTS

    def crash_point(self, reference: Any) -> str | None:
        """``POINT:OPERATION`` where the orchestrator is to crash for this order, if any."""
        return (self.get(reference).get("orchestrator") or {}).get("crash_at")

    def check(self, plan: Any) -> None:
        """Raise ``ValueError`` naming the first field of ``plan`` that cannot be used."""
        if not isinstance(plan, Mapping):
            raise ValueError("faults: must be an object")
        for name, spec in plan.items():
            field = f"faults.{name}"
            if name == "orchestrator":
                if not isinstance(spec, Mapping) or set(spec) != {"crash_at"}:
                    raise ValueError(f'{field}: must be {{"crash_at": "POINT:OPERATION"}}')
                point, _, op = str(spec["crash_at"]).partition(":")
                if point not in CRASH_POINTS or not self._known(op):
                    raise ValueError(
                        f"{field}.crash_at: must be one of {', '.join(CRASH_POINTS)}, "
                        "a colon and an operation such as charge_payment"
                    )
                continue
            if not self._known(name):
                raise ValueError(f"{field}: unknown operation")
            if not isinstance(spec, Mapping):
                raise ValueError(f"{field}: must be an object")
            for key, value in spec.items():
                _check_fault(f"{field}.{key}", key, value)

    def _known(self, operation: str) -> bool:
        return bool(operation) and (self.operations is None or operation in self.operations)


def _check_fault(field: str, key: str, value: Any) -> None:
    kind = FAULT_FIELDS.get(key)
    if kind is None:
        raise ValueError(f"{field}: unknown fault; one of {', '.join(FAULT_FIELDS)}")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{field}: must be true or false")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: must be a number")
    if kind is int:
        if type(value) is not int or not 0 <= value <= 1000:
            raise ValueError(f"{field}: must be a whole number, 0 to 1000")
    elif not 0 <= value <= MAX_DELAY_SECONDS:
        raise ValueError(f"{field}: must be a number of seconds, 0 to {MAX_DELAY_SECONDS}")
