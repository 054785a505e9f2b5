"""Reading the saga store: views for people and the orchestrator's scans. Nothing here writes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping

from saga_core.database import Connection, Row, marks, planned_each_time
from saga_core.errors import SagaNotFound
from saga_store.models import (
    DISPATCH_EVENTS,
    OUTCOME_EVENTS,
    PER_SAGA,
    VERSION_MARK,
    Alert,
    Event,
    HistoryEvent,
    Phase,
    SagaState,
    SagaView,
    StepState,
    StepView,
    client_key,
    iso,
    stored_name,
)

ACTIVE_STATES = tuple(s.value for s in SagaState if not s.terminal)
# The states written into the SQL, not bound: a query uses a partial index only where its
# WHERE clause names the index's own values, and bound ones are unknown when SQLite plans
# (with parameters, finding the active sagas scanned the table: 254 ms at a million
# finished sagas). The values are this module's constants, never input.
_ACTIVE = f"state IN ({', '.join(repr(s) for s in ACTIVE_STATES)})"
#: The sweeper's reads of active sagas (their plans are tested to use the partial index).
ACTIVE_IDS = f"SELECT id FROM sagas WHERE {_ACTIVE}"
STALE_PENDING = f"SELECT id FROM sagas WHERE {_ACTIVE} AND state = ? AND created_at < ?"


def get_saga(conn: Connection, saga_id: str) -> SagaView:
    row = conn.execute("SELECT * FROM sagas WHERE id = ?", (saga_id,)).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    steps = conn.execute(
        "SELECT * FROM saga_steps WHERE saga_id = ? ORDER BY position", (saga_id,)
    ).fetchall()
    name, version = stored_name(row["definition"])
    return SagaView(
        id=row["id"],
        definition=name,
        version=version,
        key=client_key(row["idempotency_key"]),
        state=SagaState(row["state"]),
        input=json.loads(row["input"]),
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        steps=tuple(
            StepView(
                name=s["step_name"],
                state=StepState(s["state"]),
                output=json.loads(s["output"]) if s["output"] is not None else None,
                error=s["error"],
                attempts=s["attempts"],
                compensation_attempts=s["compensation_attempts"],
                held_by=s["held_by"],
            )
            for s in steps
        ),
    )


def list_sagas(
    conn: Connection, state: SagaState | None = None, limit: int = 100, saga: str | None = None
) -> list[Row]:
    """The newest sagas (of ``state``, of the saga named ``saga``, where given)."""
    return page_sagas(conn, state, limit, saga=saga)[0]


def _named(saga: str) -> tuple[str, list[str]]:
    """A condition on ``sagas.definition`` for the saga named ``saga``, any version: the
    name alone (stored before versions) or ``name@…``, which sorts from ``name@`` up to
    ``name`` followed by the character after ``@``."""
    after_mark = chr(ord(VERSION_MARK) + 1)
    return "(definition = ? OR (definition >= ? AND definition < ?))", [
        saga,
        saga + VERSION_MARK,
        saga + after_mark,
    ]


def count_by_state(conn: Connection, active_only: bool = False) -> dict[str, int]:
    """How many sagas are in each state (states with none are left out); ``active_only``:
    of the states not yet final (served by the partial index on state)."""
    if active_only:
        sql = f"SELECT state, COUNT(*) FROM sagas WHERE {_ACTIVE} GROUP BY state"
        return dict(conn.execute(sql).fetchall())
    return dict(conn.execute("SELECT state, COUNT(*) FROM sagas GROUP BY state").fetchall())


def active_by_saga(conn: Connection) -> Counter[tuple[str, str]]:
    """How many sagas not yet final there are, by (saga name, state)."""
    sql = (
        f"SELECT definition, state, COUNT(*) FROM sagas WHERE {_ACTIVE} GROUP BY definition, state"
    )
    found: Counter[tuple[str, str]] = Counter()
    for definition, state, n in conn.execute(sql).fetchall():
        found[(stored_name(definition)[0], state)] += int(n)
    return found


def by_saga(counters: Mapping[str, int]) -> dict[str, Counter[str]]:
    """``counters`` (as :func:`counters` reads them) by counter, by the saga each counts
    for (``transitions.COUNTED``; one counted before counters were kept per saga is under
    the name "")."""
    found: dict[str, Counter[str]] = {}
    for name, value in counters.items():
        counter, _, saga = name.partition(PER_SAGA)
        found.setdefault(counter, Counter())[saga] += value
    return found


def active_saga_ids(conn: Connection) -> list[str]:
    """Sagas not yet in a terminal state (served by a partial index on state)."""
    rows = conn.execute(ACTIVE_IDS).fetchall()
    return [r["id"] for r in rows]


def stale_pending(conn: Connection, created_before: str) -> list[str]:
    """Sagas stored but never started (their submitter died in between). The sweeper asks
    every second: the active states' term lets SQLite read the partial index of the few
    active sagas, not every saga created before (a million finished ones, scanned, took the
    system from 74 to 41 sagas/s)."""
    rows = conn.execute(STALE_PENDING, (SagaState.PENDING.value, created_before)).fetchall()
    return [r["id"] for r in rows]


def saga_exists(conn: Connection, saga_id: str) -> bool:
    return conn.execute("SELECT 1 FROM sagas WHERE id = ?", (saga_id,)).fetchone() is not None


def open_alert_count(conn: Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM alerts WHERE resolved_at IS NULL").fetchone()[0])


def answers(conn: Connection) -> bool:
    """Whether the store can be read (a health check)."""
    try:
        conn.execute("SELECT 1 FROM sagas LIMIT 1").fetchall()
    except Exception:
        return False
    return True


def ended_ids(conn: Connection, saga_ids: list[str]) -> list[str]:
    """Those of ``saga_ids`` in a terminal state."""
    if not saga_ids:
        return []
    rows = conn.execute(
        planned_each_time(
            f"SELECT id FROM sagas WHERE id IN ({marks(saga_ids)}) AND NOT {_ACTIVE}"
        ),
        saga_ids,
    ).fetchall()
    return [r["id"] for r in rows]


def ended_spans(conn: Connection, saga_ids: list[str]) -> list[tuple[float, float]]:
    """When each of those of ``saga_ids`` that have ended was created and when it ended,
    in seconds since the epoch: from the history, which keeps microseconds where
    ``created_at`` and ``updated_at`` keep milliseconds (a saga takes a few of them)."""
    ends = (Event.COMPLETED, Event.COMPENSATED, Event.FAILED)
    rows = conn.execute(
        planned_each_time(
            "SELECT MIN(e.at) AS started,"
            f" MAX(CASE WHEN e.event IN ({marks(ends)}) THEN e.at END) AS ended"
            " FROM sagas s JOIN saga_events e ON e.saga_id = s.id"
            f" WHERE s.id IN ({marks(saga_ids)}) AND NOT s.{_ACTIVE} GROUP BY s.id"
        ),
        [*ends, *saga_ids],
    ).fetchall()
    return [(r["started"], r["ended"]) for r in rows if r["ended"] is not None]


def armed_after(conn: Connection, at: float) -> int:
    """Steps whose deadline lies after ``at``: sent (or sent again) since ``at``, less
    their timeout."""
    return int(
        conn.execute("SELECT COUNT(*) FROM saga_steps WHERE deadline_at > ?", (at,)).fetchone()[0]
    )


def saga_summaries(conn: Connection) -> list[Row]:
    """Every saga's id, definition, state, input and creation time (the audit reads them
    all)."""
    return conn.execute("SELECT id, definition, state, input, created_at FROM sagas").fetchall()


def step_states(conn: Connection) -> dict[tuple[str, str], str]:
    """Every step's state, by (saga id, step name)."""
    rows = conn.execute("SELECT saga_id, step_name, state FROM saga_steps").fetchall()
    return {(r["saga_id"], r["step_name"]): r["state"] for r in rows}


def alerted_saga_ids(conn: Connection) -> set[str]:
    """Sagas that ever raised an alert, open or closed."""
    return {r["saga_id"] for r in conn.execute("SELECT DISTINCT saga_id FROM alerts")}


def unheard_steps(
    conn: Connection, now: float, heard_before: float, limit: int = 2000
) -> list[Row]:
    """Steps in flight that nothing has been heard of since ``heard_before``, or whose
    deadline passed by ``now``; the least recently heard of first. Each row has the step's
    ``saga_id``, ``step_name``, ``state``, ``heard_at``, ``held_by``, ``deadline_at``,
    ``timeout`` and its saga's ``definition``."""
    return conn.execute(
        "SELECT s.saga_id, s.step_name, s.state, s.heard_at, s.held_by, s.deadline_at, "
        "s.timeout, g.definition FROM saga_steps s JOIN sagas g ON g.id = s.saga_id "
        "WHERE s.deadline_at IS NOT NULL AND (s.heard_at <= ? OR s.deadline_at <= ?) "
        "ORDER BY s.heard_at LIMIT ?",
        (heard_before, now, limit),
    ).fetchall()


def services_last_heard(conn: Connection, seen_after: float) -> dict[str, float]:
    """Each service with a worker heard from since ``seen_after`` (its steps' liveness is
    known from heartbeats), and when the last of its workers was heard from."""
    last: dict[str, float] = {}
    for r in conn.execute(
        "SELECT services, last_seen FROM workers WHERE last_seen > ?", (seen_after,)
    ):
        for name in filter(None, r["services"].split(",")):
            last[name] = max(last.get(name, 0.0), r["last_seen"])
    return last


def workers(conn: Connection) -> list[Row]:
    """Every worker heard from (and not forgotten), the most recently heard first."""
    return conn.execute(
        "SELECT name, pid, services, interval, held, first_seen, last_seen FROM workers "
        "ORDER BY last_seen DESC"
    ).fetchall()


def definition_of(conn: Connection, saga_id: str) -> str:
    """The name of the saga's definition."""
    row = conn.execute("SELECT definition FROM sagas WHERE id = ?", (saga_id,)).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    return str(row["definition"])


def step_outputs(conn: Connection, saga_id: str) -> tuple[str, dict, dict[str, object]]:
    """The saga's definition, its input and the outputs of its completed steps: what a
    command is built from."""
    row = conn.execute("SELECT definition, input FROM sagas WHERE id = ?", (saga_id,)).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    outputs = {
        r["step_name"]: json.loads(r["output"])
        for r in conn.execute(
            "SELECT step_name, output FROM saga_steps WHERE saga_id = ? AND output IS NOT NULL",
            (saga_id,),
        )
    }
    return row["definition"], json.loads(row["input"]), outputs


def alerts(
    conn: Connection, include_resolved: bool = False, saga_id: str | None = None
) -> list[Alert]:
    """Alerts, oldest first: the open ones, or all; of every saga, or of one."""
    rows = conn.execute(
        "SELECT * FROM alerts WHERE (? = 1 OR resolved_at IS NULL) "
        "AND (? = '' OR saga_id = ?) ORDER BY id",
        (int(include_resolved), saga_id or "", saga_id or ""),
    ).fetchall()
    return [
        Alert(
            r["id"],
            r["saga_id"],
            r["step_name"],
            r["error"],
            r["created_at"],
            r["resolved_at"],
            r["resolution"],
        )
        for r in rows
    ]


def counters(conn: Connection) -> dict[str, int]:
    """Every counter: the sum of its shards (see ``saga_store.unit.SHARD``)."""
    return {
        r[0]: int(r[1]) for r in conn.execute("SELECT name, SUM(value) FROM counters GROUP BY name")
    }


def history(conn: Connection, saga_id: str) -> list[HistoryEvent]:
    """The saga's history, oldest first, each outcome with the time since its dispatch.
    Raises ``SagaNotFound`` for an unknown saga."""
    if not saga_exists(conn, saga_id):
        raise SagaNotFound(saga_id)
    dispatched: dict[tuple[str, str, int], float] = {}
    events = []
    for r in conn.execute("SELECT * FROM saga_events WHERE saga_id = ? ORDER BY id", (saga_id,)):
        event = Event(r["event"])
        key = (r["step_name"], r["phase"], r["attempt"])
        duration = None
        if event in DISPATCH_EVENTS:
            dispatched[key] = r["at"]
        elif event in OUTCOME_EVENTS and key in dispatched:
            duration = round((r["at"] - dispatched[key]) * 1000, 1)
        events.append(
            HistoryEvent(
                id=r["id"],
                at=iso(r["at"]),
                event=event,
                actor=r["actor"],
                step=r["step_name"],
                phase=Phase(r["phase"]) if r["phase"] else None,
                attempt=r["attempt"],
                tries=r["tries"],
                error=r["error"],
                note=r["note"],
                duration_ms=duration,
            )
        )
    return events


def page_sagas(
    conn: Connection,
    state: SagaState | None,
    limit: int,
    after: tuple[str, str] | None = None,
    saga: str | None = None,
) -> tuple[list[Row], tuple[str, str] | None]:
    """A page of sagas (of ``state``, of the saga named ``saga``, where given), newest
    first, after the ``(created_at, id)`` that ended the last page; returns the rows and
    where the next page starts (None: this was the last)."""
    where, args = [], []
    if state is not None:
        where.append("state = ?")
        args.append(state.value)
    if saga is not None:
        condition, values = _named(saga)
        where.append(condition)
        args.extend(values)
    if after is not None:
        where.append("(created_at, id) < (?, ?)")
        args.extend(after)
    sql = "SELECT * FROM sagas" + (" WHERE " + " AND ".join(where) if where else "")
    rows = conn.execute(
        sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit + 1)
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
