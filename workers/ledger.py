"""The idempotency ledger: each service's record of which keys took effect.

An action's effect and its ledger row are written in one local transaction, so a key takes
effect at most once and a repeat returns the first result. A compensation for a key whose
action never ran is recorded too, so that the late action is refused instead of taking effect.

A run first takes its key for the transaction without waiting: one that finds another run
of the key under way (a replica sharing the ledger, the step sent again while a cut-off
worker still runs it) raises :class:`UnderWay` and leaves the key to it. On PostgreSQL
that lock is the run's lease (``workers.lease``), and a run costs few round trips: the
transaction's start, the key's lock and the lookup go in one; the effect's own reads, one
each; the ledger row and the commit, one.

A key's first delivery, where the effect is made in this database alone, does not wait
for the lookup: the lock, the effect's writes and the ledger row go together, and the
ledger row's insert itself finds a key recorded before (it fails, and everything with
it). Such an effect may then run, and the hooks before it, on a run whose writes are
never seen (the key was recorded, or another run holds it); an effect made through an
outside system never runs before its key is known new.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from saga_core.database import (
    SQLITE,
    Connection,
    Row,
    claim_key,
    claim_refused,
    dialect,
    key_taken,
    pipeline,
    transaction,
    try_lock_key,
)
from saga_core.errors import BusinessError, DatabaseUnavailable

BLOCKED = "refused: this request was already compensated"


class UnderWay(Exception):
    """Another run of the key holds it: this one leaves the key to that run."""

    def __init__(self, key: str):
        super().__init__(f"another run of {key} is under way")
        self.key = key


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def run_action(
    conn: Connection,
    key: str,
    operation: str,
    effect: Callable[[], Any],
    *,
    first: bool = False,
) -> tuple[Any, bool]:
    """Run ``effect`` once for ``key``; returns ``(output, fresh)``.

    A business failure is recorded (its partial writes rolled back) and raised again on
    every repeat. A transient failure (any other exception) rolls everything back and
    records nothing, so a retry starts afresh.

    ``first``: the key is almost surely new (its first delivery) and the effect is made in
    this database alone. The run then does not wait for the key's record before the
    effect (:func:`_run_at_once`).
    """
    if first and dialect(conn) != SQLITE:
        done = _run_at_once(conn, key, operation, effect)
        if done is not None:
            return done
    try:
        with pipeline(conn), transaction(conn):
            row = _claim(conn, key)
            if row is None:
                output = effect()
                _record(conn, key, operation, "done", output)
                return output, True
            if row["action_status"] is None:
                _block(conn, key, operation)
    except BusinessError as exc:
        # The effect's own writes went with the transaction (no savepoint on the way of
        # every step): the refusal is recorded in one of its own.
        return _refused(conn, key, operation, exc)
    return _repeat(row)


def _run_at_once(
    conn: Connection, key: str, operation: str, effect: Callable[[], Any]
) -> tuple[Any, bool] | None:
    """The key's claim, the effect and the ledger row sent together, in one round trip
    where the effect reads nothing first. Where another run holds the key, the claim fails
    the transaction before anything else runs: :class:`UnderWay`. Where the key turns out
    recorded already, the ledger row's insert fails and the whole transaction with it, so
    the effect that ran again was never seen. Then, and on any failure but the database's
    absence, None: the usual way answers, reading the record first, so a repeat answers
    as it always did, whatever its second run of the effect met."""
    claim = None
    try:
        with pipeline(conn), transaction(conn):
            claim = claim_key(conn, "ledger", key)
            output = effect()
            _record(conn, key, operation, "done", output)
        return output, True
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        if claim_refused(claim):
            raise UnderWay(key) from None
        if isinstance(exc, BusinessError):
            return _refused(conn, key, operation, exc)
        return None


def _refused(conn: Connection, key: str, operation: str, failure: BusinessError) -> Any:
    with pipeline(conn), transaction(conn):
        row = _claim(conn, key)
        if row is None:
            _record(conn, key, operation, "rejected", failure.message)
        elif row["action_status"] is None:
            _block(conn, key, operation)
    if row is None:
        raise failure
    return _repeat(row)  # another run recorded the key meanwhile: its record stands


def _record(conn: Connection, key: str, operation: str, status: str, result: Any) -> None:
    conn.execute(
        "INSERT INTO idempotency (key, operation, action_status, action_result, updated_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (key, operation, status, json.dumps(result), _now()),
    )


def _block(conn: Connection, key: str, operation: str) -> None:
    """The key was compensated before its action arrived: the action is refused for good."""
    conn.execute(
        "UPDATE idempotency SET operation = ?, action_status = 'blocked', "
        "action_result = ?, updated_at = ? WHERE key = ?",
        (operation, json.dumps(BLOCKED), _now(), key),
    )


def _repeat(row: Row) -> tuple[Any, bool]:
    """The answer of a key already recorded: its first result, or its refusal again."""
    if row["action_status"] == "done":
        return json.loads(row["action_result"]), False
    if row["action_status"] is None:
        raise BusinessError(BLOCKED)
    raise BusinessError(json.loads(row["action_result"]))


def run_compensation(
    conn: Connection, key: str, compensation: str, undo: Callable[[Any], Any]
) -> tuple[Any, bool]:
    """Undo the action recorded under ``key`` once; returns ``(output, fresh)``.

    Where the action never took effect (refused, or not arrived yet), nothing is undone,
    and the key is marked so that a late action is refused.
    """
    with pipeline(conn), transaction(conn):
        row = _claim(conn, key)
        if row is not None and row["compensation_status"] == "done":
            return json.loads(row["compensation_result"]), False
        if row is not None and row["action_status"] == "done":
            output = undo(json.loads(row["action_result"]))
        else:
            output = {"undone": False, "reason": "the action never took effect"}
        conn.execute(
            "INSERT INTO idempotency (key, compensation, compensation_status, "
            "compensation_result, updated_at) VALUES (?, ?, 'done', ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET compensation = excluded.compensation, "
            "compensation_status = 'done', compensation_result = excluded.compensation_result, "
            "updated_at = excluded.updated_at",
            (key, compensation, json.dumps(output), _now()),
        )
    return output, True


def _claim(conn: Connection, key: str) -> Row | None:
    """Take ``key`` for the transaction and read its record (sent together: the lookup
    runs after the lock, so it sees what the last holder committed)."""
    lock = try_lock_key(conn, "ledger", key)
    found = conn.execute("SELECT * FROM idempotency WHERE key = ?", (key,))
    if not key_taken(lock):
        raise UnderWay(key)
    return found.fetchone()


def begin_delivery(conn: Connection, key: str, operation: str) -> int:
    """Count one more run of ``operation`` for ``key``; returns how many runs in a row
    started without finishing (the worker died in each). Redis keeps no delivery count,
    so a message that kills its worker would otherwise come back for ever."""
    with transaction(conn):
        row = conn.execute(
            "INSERT INTO deliveries (key, operation, unfinished) VALUES (?, ?, 1) "
            "ON CONFLICT (key, operation) DO UPDATE SET unfinished = deliveries.unfinished + 1 "
            "RETURNING unfinished",
            (key, operation),
        ).fetchone()
    return int(row[0])


def end_delivery(conn: Connection, key: str, operation: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM deliveries WHERE key = ? AND operation = ?", (key, operation))
