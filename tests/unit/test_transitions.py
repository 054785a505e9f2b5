"""Every saga transition, allowed and refused, against a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga_core.database import SQLITE, Connection, Location, dialect
from saga_core.errors import SagaNotFound, TransitionRefused
from saga_core.messages import Heartbeat, Held
from saga_store import SagaState, StepSpec, StepState, liveness, open_store, queries, schema
from saga_store import transitions as t
from saga_store.models import Phase

STEPS = [
    StepSpec("a", compensable=True, best_effort=False, timeout=10, max_dispatches=3),
    StepSpec("b", compensable=True, best_effort=False, timeout=10, max_dispatches=3),
    StepSpec("c", compensable=True, best_effort=False, timeout=10, max_dispatches=3),
    StepSpec("mail", compensable=False, best_effort=True, timeout=10, max_dispatches=3),
]
NOW = 1_000.0


@pytest.fixture
def db(database: Location) -> Iterator[Connection]:
    """The store, on SQLite and on PostgreSQL: every contract below holds on both."""
    conn = open_store(database)
    yield conn
    conn.close()


def new_saga(db: Connection, saga_id: str = "s1") -> str:
    t.create_saga(db, saga_id, "test", {"x": 1}, STEPS, NOW, idempotency_key=saga_id)
    return saga_id


def running(db: Connection, upto: str | None = None) -> str:
    """A started saga whose steps before ``upto`` completed (``upto`` is running)."""
    sid = new_saga(db)
    t.start_saga(db, sid, NOW)
    for spec in STEPS:
        if spec.name == upto:
            break
        t.complete_step(db, sid, spec.name, {"done": spec.name}, NOW)
    return sid


def states(db: Connection, sid: str = "s1") -> tuple[str, dict[str, str]]:
    view = queries.get_saga(db, sid)
    return view.state.value, {s.name: s.state.value for s in view.steps}


def snapshot(db: Connection) -> list[tuple]:
    return [
        tuple(r)
        for table in ("sagas", "saga_steps", "alerts")
        for r in db.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
    ]


# --- schema -----------------------------------------------------------------------------


def test_schema_has_the_designed_columns_and_a_version(db: Connection) -> None:
    def columns(table: str) -> list[str]:
        return [d[0] for d in db.execute(f"SELECT * FROM {table} LIMIT 0").description]

    assert columns("sagas")[:5] == ["id", "state", "input", "created_at", "updated_at"]
    assert columns("saga_steps")[:5] == ["saga_id", "step_name", "state", "output", "error"]
    assert schema.revision(db) == schema.HEAD
    if dialect(db) == SQLITE:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_schema_refuses_an_unknown_state_word(db: Connection) -> None:
    new_saga(db)
    with pytest.raises(Exception, match=r"(?i)check constraint"):
        db.execute("UPDATE sagas SET state = 'done' WHERE id = 's1'")


def test_migrate_twice_changes_nothing(database: Location) -> None:
    open_store(database).close()
    assert schema.migrate(open_store(database)) == schema.HEAD


# --- create and start -------------------------------------------------------------------


def test_create_stores_pending_saga_and_steps(db: Connection) -> None:
    new_saga(db)
    assert states(db) == ("pending", dict.fromkeys(["a", "b", "c", "mail"], "pending"))
    assert queries.get_saga(db, "s1").input == {"x": 1}


def test_create_with_a_known_key_returns_the_first_saga(db: Connection) -> None:
    t.create_saga(db, "first", "test", {}, STEPS, NOW, idempotency_key="k")
    assert t.create_saga(db, "second", "test", {}, STEPS, NOW, idempotency_key="k") == (
        "first",
        False,
    )
    assert db.execute("SELECT COUNT(*) FROM sagas").fetchone()[0] == 1


def test_start_runs_and_dispatches_the_first_step(db: Connection) -> None:
    new_saga(db)
    result = t.start_saga(db, "s1", NOW)
    assert result.dispatches == [t.Dispatch("s1", "a", Phase.ACTION, 1)]
    assert states(db) == (
        "running",
        {"a": "running", "b": "pending", "c": "pending", "mail": "pending"},
    )


def test_start_is_refused_once_running(db: Connection) -> None:
    running(db, "a")
    before = snapshot(db)
    with pytest.raises(TransitionRefused):
        t.start_saga(db, "s1", NOW)
    assert snapshot(db) == before


def test_unknown_saga_is_named(db: Connection) -> None:
    with pytest.raises(SagaNotFound, match="nope"):
        t.start_saga(db, "nope", NOW)


# --- steps ------------------------------------------------------------------------------


def test_complete_step_starts_the_next_one(db: Connection) -> None:
    sid = running(db, "a")
    result = t.complete_step(db, sid, "a", {"id": 1}, NOW)
    assert [d.step for d in result.dispatches] == ["b"]
    assert states(db)[1]["a"] == "completed"
    assert queries.get_saga(db, sid).step("a").output == {"id": 1}


def test_completing_the_last_step_completes_the_saga(db: Connection) -> None:
    sid = running(db, "mail")
    result = t.complete_step(db, sid, "mail", {}, NOW)
    assert result.saga_state is SagaState.COMPLETED and result.dispatches == []
    assert states(db) == ("completed", dict.fromkeys(["a", "b", "c", "mail"], "completed"))


@pytest.mark.parametrize("step", ["a", "c"])  # a: already completed; c: not started
def test_outcome_for_a_step_not_running_is_refused(db: Connection, step: str) -> None:
    sid = running(db, "b")
    before = snapshot(db)
    with pytest.raises(TransitionRefused):
        t.complete_step(db, sid, step, {}, NOW)
    with pytest.raises(TransitionRefused):
        t.fail_step(db, sid, step, "late", business=True, now=NOW)
    assert snapshot(db) == before


def test_business_failure_compensates_completed_steps_last_first(db: Connection) -> None:
    sid = running(db, "c")
    result = t.fail_step(db, sid, "c", "declined", business=True, now=NOW)
    assert result.dispatches == [t.Dispatch(sid, "b", Phase.COMPENSATION, 1)]
    assert states(db) == (
        "compensating",
        {"a": "compensating", "b": "compensating", "c": "failed", "mail": "pending"},
    )
    assert queries.get_saga(db, sid).error == "c: declined"
    result = t.complete_compensation(db, sid, "b", NOW)
    assert [d.step for d in result.dispatches] == ["a"]
    result = t.complete_compensation(db, sid, "a", NOW)
    assert result.saga_state is SagaState.COMPENSATED
    assert states(db)[1] == {
        "a": "compensated",
        "b": "compensated",
        "c": "failed",
        "mail": "pending",
    }


def test_business_failure_of_the_first_step_ends_compensated(db: Connection) -> None:
    sid = running(db, "a")
    result = t.fail_step(db, sid, "a", "unknown SKU", business=True, now=NOW)
    assert result.saga_state is SagaState.COMPENSATED and result.dispatches == []


def test_exhausted_step_is_compensated_too(db: Connection) -> None:
    sid = running(db, "b")
    result = t.fail_step(db, sid, "b", "timeout", business=False, now=NOW)
    assert result.dispatches == [t.Dispatch(sid, "b", Phase.COMPENSATION, 1)]
    assert states(db)[1]["b"] == "compensating"


def test_best_effort_failure_lets_the_saga_complete(db: Connection) -> None:
    sid = running(db, "mail")
    result = t.fail_step(db, sid, "mail", "smtp down", business=False, now=NOW)
    assert result.saga_state is SagaState.COMPLETED
    view = queries.get_saga(db, sid)
    assert view.step("mail").state is StepState.FAILED and view.step("mail").error == "smtp down"


# --- compensations ----------------------------------------------------------------------


def test_compensation_outcome_is_refused_unless_in_flight(db: Connection) -> None:
    sid = running(db, "c")
    t.fail_step(db, sid, "c", "declined", business=True, now=NOW)
    before = snapshot(db)
    for step in ("a", "c"):  # a: queued, not yet dispatched; c: never compensated
        with pytest.raises(TransitionRefused):
            t.complete_compensation(db, sid, step, NOW)
        with pytest.raises(TransitionRefused):
            t.fail_compensation(db, sid, step, "x", NOW)
    assert snapshot(db) == before


def test_failed_compensation_alerts_and_the_others_still_run(db: Connection) -> None:
    sid = running(db, "c")
    t.fail_step(db, sid, "c", "declined", business=True, now=NOW)
    result = t.fail_compensation(db, sid, "b", "refund API down", NOW)
    assert result.alerts == [("b", "refund API down")]
    assert [d.step for d in result.dispatches] == ["a"]
    result = t.complete_compensation(db, sid, "a", NOW)
    assert result.saga_state is SagaState.FAILED
    assert states(db)[1]["b"] == "failed" and states(db)[1]["a"] == "compensated"
    [alert] = queries.alerts(db)
    assert (alert.saga_id, alert.step, alert.error) == (sid, "b", "refund API down")


def test_duplicate_compensation_outcome_is_refused(db: Connection) -> None:
    sid = running(db, "b")
    t.fail_step(db, sid, "b", "declined", business=True, now=NOW)
    t.complete_compensation(db, sid, "a", NOW)
    with pytest.raises(TransitionRefused):
        t.complete_compensation(db, sid, "a", NOW)


# --- lost steps and recovery -------------------------------------------------------------


def unheard(db: Connection, now: float, silent_for: float = 10) -> list[tuple[str, str]]:
    rows = queries.unheard_steps(db, now, now - silent_for)
    return [(r["saga_id"], r["step_name"]) for r in rows]


def lost(db: Connection, sid: str, step: str, now: float) -> t.Transition:
    return t.redispatch_lost(db, sid, step, now, silent_for=10, reason="test")


def test_redispatch_is_refused_for_a_step_heard_of_lately(db: Connection) -> None:
    sid = running(db, "a")
    with pytest.raises(TransitionRefused):
        lost(db, sid, "a", NOW + 5)


def test_lost_step_is_dispatched_again(db: Connection) -> None:
    sid = running(db, "a")
    assert unheard(db, NOW + 11) == [(sid, "a")]
    result = lost(db, sid, "a", NOW + 11)
    assert result.dispatches == [t.Dispatch(sid, "a", Phase.ACTION, 2)]
    assert unheard(db, NOW + 20) == []
    assert queries.counters(db)["redispatches"] == 1
    assert queries.history(db, sid)[-1].note == "test"


def test_a_heartbeat_keeps_a_step_from_being_judged_lost(db: Connection) -> None:
    sid = running(db, "a")
    assert unheard(db, NOW + 9.5, silent_for=5) == [(sid, "a")]
    beat = Heartbeat("w@h", 7, ("svc",), 1.0, (Held(sid, "a", Phase.ACTION, 1),))
    assert liveness.record_heartbeats(db, [beat], NOW + 9) == 1
    assert unheard(db, NOW + 9.5, silent_for=5) == []
    with pytest.raises(TransitionRefused):  # heard of a second before, past its deadline
        lost(db, sid, "a", NOW + 11)
    assert queries.get_saga(db, sid).step("a").held_by == "w@h pid 7"
    assert queries.services_last_heard(db, NOW) == {"svc": NOW + 9}
    # news of another phase, or of a step not in flight, changes nothing
    other = Heartbeat("w@h", 7, ("svc",), 1.0, (Held(sid, "a", Phase.COMPENSATION, 1),))
    assert liveness.record_heartbeats(db, [other], NOW + 30) == 0
    assert unheard(db, NOW + 30) == [(sid, "a")]


def test_step_is_given_up_after_its_budget_and_compensated(db: Connection) -> None:
    sid = running(db, "b")
    now = NOW
    for _ in range(2):
        now += 11
        lost(db, sid, "b", now)
    result = lost(db, sid, "b", now + 11)
    assert result.dispatches == [t.Dispatch(sid, "b", Phase.COMPENSATION, 1)]
    view = queries.get_saga(db, sid)
    assert view.state is SagaState.COMPENSATING
    assert view.step("b").error == "no outcome after 3 dispatches (test)"
    with pytest.raises(TransitionRefused):  # its late success changes nothing
        t.complete_step(db, sid, "b", {}, now + 12)


def test_compensation_given_up_raises_an_alert(db: Connection) -> None:
    sid = running(db, "b")
    t.fail_step(db, sid, "b", "declined", business=True, now=NOW)
    now = NOW
    for _ in range(3):
        now += 11
        result = lost(db, sid, "a", now)
    assert result.saga_state is SagaState.FAILED
    assert [a.step for a in queries.alerts(db)] == ["a"]


def test_resume_starts_a_pending_saga(db: Connection) -> None:
    new_saga(db)
    assert [d.step for d in t.resume_saga(db, "s1", NOW).dispatches] == ["a"]


def test_resume_sends_the_in_flight_command_again(db: Connection) -> None:
    sid = running(db, "b")
    result = t.resume_saga(db, sid, NOW + 5)
    assert result.dispatches == [t.Dispatch(sid, "b", Phase.ACTION, 1)]
    assert unheard(db, NOW + 11) == []  # heard of at NOW + 5


def test_resume_sends_the_in_flight_compensation_again(db: Connection) -> None:
    sid = running(db, "c")
    t.fail_step(db, sid, "c", "declined", business=True, now=NOW)
    result = t.resume_saga(db, sid, NOW)
    assert result.dispatches == [t.Dispatch(sid, "b", Phase.COMPENSATION, 1)]


def test_resume_is_refused_for_a_terminal_saga(db: Connection) -> None:
    sid = running(db, "a")
    t.fail_step(db, sid, "a", "declined", business=True, now=NOW)
    with pytest.raises(TransitionRefused):
        t.resume_saga(db, sid, NOW)
    assert queries.active_saga_ids(db) == []


def test_a_transaction_inside_another_rolls_back_alone(db: Connection) -> None:
    from saga_store import transaction

    with transaction(db):
        t.count(db, "kept")
        with pytest.raises(RuntimeError), transaction(db):
            t.count(db, "undone")
            raise RuntimeError("refused half-way")
        t.count(db, "kept")
    assert queries.counters(db) == {"kept": 2}


def test_a_new_store_opened_while_another_process_creates_it(tmp_path: Path) -> None:
    import threading

    from saga_core.sqlite import connect

    path = tmp_path / "new.db"
    creator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE t (x)")
    threading.Timer(0.3, creator.execute, ["COMMIT"]).start()
    conn = connect(path)  # waits for the creator instead of failing with "locked"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_sweepers_reads_of_active_sagas_use_the_partial_index(tmp_path: Path) -> None:
    # With a million finished sagas in the store, a scan per sweep halved the throughput
    # (python -m bench, growth): the queries must read the index of the active ones only.
    conn = open_store(tmp_path / "sagas.db")
    plans = [
        " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall())
        for sql, args in (
            (queries.ACTIVE_IDS, ()),
            (queries.STALE_PENDING, ("pending", "2026-11-28")),
        )
    ]
    assert all("USING INDEX sagas_by_state" in plan for plan in plans), plans


# --- batches ----------------------------------------------------------------------------


def test_a_transition_that_fails_halfway_in_a_batch_leaves_its_saga_as_it_was(
    db: Connection,
) -> None:
    first, second = new_saga(db, "s1"), new_saga(db, "s2")
    t.start_saga(db, first, NOW)
    t.start_saga(db, second, NOW)
    before = snapshot(db)
    with t.batch(db, [first, second]) as unit:
        t.complete_step(unit, first, "a", {"done": "a"}, NOW + 1)
        with pytest.raises(RuntimeError), unit.attempt(second) as saga:
            # a transition's changes, then an error before it returns
            saga.state, saga.steps[0].state, saga.steps[0].output = "failed", "failed", "x"
            unit.record((second, NOW + 1, "failed", None, None, None, None, None, None, "x"))
            unit.count("sagas_failed")
            raise RuntimeError("halfway")
        # the unit goes on with the saga as it was read
        t.complete_step(unit, second, "a", {"done": "a"}, NOW + 2)
    assert states(db, first)[1]["b"] == states(db, second)[1]["b"] == "running"
    assert snapshot(db) != before
    events = [e.event for e in queries.history(db, second)]
    assert events[-2:] == ["succeeded", "dispatched"] and "failed" not in events
    assert queries.counters(db).get("sagas_failed", 0) == 0


def test_on_postgresql_a_batch_takes_one_round_trip_to_read_and_one_to_commit(
    db: Connection,
) -> None:
    # Each round trip costs the server and the orchestrator CPU, and a remote server its
    # latency: the BEGIN goes with the reads, and the writes with the COMMIT.
    if dialect(db) == SQLITE:
        pytest.skip("SQLite runs in the process: no round trips")
    sagas = [new_saga(db, f"s{n}") for n in range(3)]
    for sid in sagas:
        t.start_saga(db, sid, NOW)
    before = db.round_trips  # type: ignore[attr-defined]
    with t.batch(db, sagas) as unit:
        for sid in sagas:
            t.complete_step(unit, sid, "a", {"done": "a"}, NOW + 1)
    assert db.round_trips - before == 2  # type: ignore[attr-defined]
    assert not db.in_transaction
    assert all(
        states(db, sid)
        == ("running", {"a": "completed", "b": "running", "c": "pending", "mail": "pending"})
        for sid in sagas
    )

    before = db.round_trips  # type: ignore[attr-defined]
    new_saga(db, "s9")  # its key looked up, then the saga written and committed
    assert db.round_trips - before == 2  # type: ignore[attr-defined]
    assert states(db, "s9")[0] == "pending"


def test_on_postgresql_a_key_stored_meanwhile_fails_the_whole_unit_to_be_tried_again(
    database: Location,
) -> None:
    # Two processes submit the same order at once: both find its key free, and the second
    # one's writes fail with its COMMIT. Nothing of it may stay, its connection must go on
    # serving, and tried again it finds the first one's saga.
    if database.dialect == SQLITE:
        pytest.skip("SQLite's write lock orders the two: the second finds the key")
    from saga_core.errors import TransientError

    first, second = open_store(database), open_store(database)
    try:
        with (
            pytest.raises(TransientError, match="stored by another process"),
            t.batch(second, []) as unit,
        ):
            assert unit.saga_with_key("order-1") is None
            t.create_saga(first, "s1", "test", {"x": 1}, STEPS, NOW, idempotency_key="order-1")
            t.create_saga(unit, "s2", "test", {"x": 2}, STEPS, NOW, idempotency_key="order-1")
        assert not second.in_transaction
        left = [
            second.execute(f"SELECT COUNT(*) FROM {table} WHERE saga_id = 's2'").fetchone()[0]
            for table in ("saga_steps", "saga_events")
        ]
        assert not queries.saga_exists(second, "s2") and left == [0, 0]
        again = t.create_saga(second, "s3", "test", {"x": 2}, STEPS, NOW, idempotency_key="order-1")
        assert again == ("s1", False)
    finally:
        first.close()
        second.close()


def test_on_postgresql_a_batchs_reads_use_the_indexes_as_a_new_store_grows(
    database: Location,
) -> None:
    # A plan PostgreSQL keeps is chosen once: on a new store, before its first ANALYZE,
    # a scan of the whole table, which every batch then repeated as the table grew.
    if database.dialect == SQLITE:
        pytest.skip("SQLite plans these reads by the indexes whatever the size")
    db = open_store(database)
    try:
        sagas = [new_saga(db, f"s{n}") for n in range(2)]
        for _ in range(8):  # more than it takes PostgreSQL to settle on a kept plan
            with t.batch(db, sagas):
                pass
        with t.batch(db, []) as unit:
            for n in range(2000):
                t.create_saga(unit, f"g{n}", "test", {"x": n}, STEPS, NOW, idempotency_key=f"g{n}")

        def scans() -> list[int]:
            sql = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = ?"
            return [db.execute(sql, (table,)).fetchone()[0] for table in ("sagas", "saga_steps")]

        with t.batch(db, []) as unit:
            before = scans()
            unit.load(sagas)  # what a batch of these two sagas' outcomes reads first
            assert scans() == before
        assert [s.state for s in map(unit.saga, sagas)] == ["pending", "pending"]
    finally:
        db.close()


def test_a_batch_of_many_sagas_writes_each_as_it_would_alone(db: Connection) -> None:
    # Past a few dozen rows, PostgreSQL's writes of a batch go many rows to a statement.
    from saga_core.database import MANY_ROWS

    def rows(sid: str) -> list[tuple]:
        steps = db.execute(
            "SELECT step_name, state, output, error, attempts, compensation_attempts, "
            "deadline_at, heard_at, held_by FROM saga_steps WHERE saga_id = ? ORDER BY position",
            (sid,),
        ).fetchall()
        events = db.execute(
            "SELECT at, event, step_name, phase, attempt, tries, error, note, actor "
            "FROM saga_events WHERE saga_id = ? ORDER BY id",
            (sid,),
        ).fetchall()
        saga = db.execute("SELECT state, updated_at, error FROM sagas WHERE id = ?", (sid,))
        return [tuple(saga.fetchone()), *map(tuple, steps), *map(tuple, events)]

    alone = new_saga(db, "alone")
    t.start_saga(db, alone, NOW)
    t.complete_step(db, alone, "a", {"done": "a"}, NOW + 1)
    sagas = [f"s{n}" for n in range(MANY_ROWS + 6)]
    with t.batch(db, []) as unit:
        for sid in sagas:
            t.create_saga(unit, sid, "test", {"x": 1}, STEPS, NOW, idempotency_key=sid)
            t.start_saga(unit, sid, NOW)
    with t.batch(db, sagas) as unit:
        for sid in sagas:
            t.complete_step(unit, sid, "a", {"done": "a"}, NOW + 1)
    assert all(rows(sid) == rows(alone) for sid in sagas)
    assert queries.counters(db)["sagas_started/test"] == len(sagas) + 1
