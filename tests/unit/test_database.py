"""One connection interface on SQLite and PostgreSQL: transactions, pipelines, failures."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import psycopg
import pytest

from saga_core import database
from saga_core.database import (
    POSTGRESQL,
    Connection,
    Location,
    connect,
    insert_many,
    pipeline,
    transaction,
    update_many,
)
from saga_core.errors import DatabaseUnavailable

#: What a statement the database refuses raises, on either.
FAILED = (sqlite3.Error, psycopg.Error)


@pytest.fixture
def db(database: Location) -> Iterator[Connection]:
    conn = connect(database)
    if database.dialect == POSTGRESQL:
        conn.execute(f"CREATE SCHEMA {database.schema}")
    conn.execute("CREATE TABLE items (k TEXT PRIMARY KEY, v INTEGER)")
    yield conn
    conn.close()


def stored(db: Connection) -> list[tuple[str, int | None]]:
    return [(r["k"], r["v"]) for r in db.execute("SELECT k, v FROM items ORDER BY k")]


def test_a_statement_failing_at_a_read_in_a_transaction_leaves_the_connection_usable(
    db: Connection,
) -> None:
    db.execute("INSERT INTO items VALUES ('a', 1)")
    with (
        pytest.raises(FAILED, match=r"no such table|does not exist"),
        pipeline(db),
        transaction(db),
    ):
        db.execute("INSERT INTO items VALUES ('b', 2)")
        db.execute("SELECT * FROM missing").fetchone()
    assert not db.in_transaction
    with transaction(db):
        db.execute("INSERT INTO items VALUES ('c', 3)")
    assert stored(db) == [("a", 1), ("c", 3)]


def test_a_statement_failing_unread_at_the_end_of_a_transaction_rolls_it_all_back(
    db: Connection,
) -> None:
    db.execute("INSERT INTO items VALUES ('a', 1)")
    with pytest.raises(FAILED, match=r"UNIQUE|unique"), pipeline(db), transaction(db):
        db.execute("INSERT INTO items VALUES ('b', 2)")
        db.execute("INSERT INTO items VALUES ('a', 9)")  # its failure is read at COMMIT
    assert not db.in_transaction
    with transaction(db):
        db.execute("INSERT INTO items VALUES ('c', 3)")
    assert stored(db) == [("a", 1), ("c", 3)]


def test_a_failed_inner_transaction_rolls_back_alone(db: Connection) -> None:
    with pipeline(db), transaction(db):
        db.execute("INSERT INTO items VALUES ('a', 1)")
        with pytest.raises(FAILED, match=r"UNIQUE|unique"), transaction(db):
            db.execute("INSERT INTO items VALUES ('b', 2)")
            assert db.execute("INSERT INTO items VALUES ('a', 9)").rowcount == 1
        db.execute("INSERT INTO items VALUES ('c', 3)")
    assert stored(db) == [("a", 1), ("c", 3)]


def test_pipelined_statements_each_answer_their_own(db: Connection) -> None:
    changed = db.executemany("INSERT INTO items VALUES (?, ?)", [("a", 1), ("b", None), ("c", 3)])
    assert changed.rowcount == 3
    with pipeline(db):
        odd = db.execute("SELECT k FROM items WHERE v = ? OR v = ? ORDER BY k", (1, 3))
        empty = db.execute("SELECT k FROM items WHERE v IS NULL AND k = ?", ("z",))
        moved = db.execute("UPDATE items SET v = ? WHERE v IS NULL", (2,))
    assert [r[0] for r in odd.fetchall()] == ["a", "c"]
    assert empty.fetchone() is None
    assert moved.rowcount == 1
    assert stored(db) == [("a", 1), ("b", 2), ("c", 3)]


def test_on_postgresql_a_lost_connection_is_told_and_the_next_statement_reconnects(
    postgres_url: str, pg_schema: str
) -> None:
    conn = connect(Location(postgres_url, pg_schema))
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(DatabaseUnavailable), pipeline(conn), transaction(conn):
        conn.execute("SELECT 1").fetchone()
    assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    conn.close()


def test_on_postgresql_a_connection_keeps_few_plans_in_the_server(
    postgres_url: str, pg_schema: str
) -> None:
    from saga_core.postgres import PREPARED_MAX

    conn = connect(Location(postgres_url, pg_schema))
    for _ in range(3):
        assert conn.execute("SELECT ? || 'x'", ("a",)).fetchone()[0] == "ax"
    for n in range(1, 2 * PREPARED_MAX):  # IN lists of every size, each run once
        conn.execute(f"SELECT 1 WHERE 1 IN ({', '.join('?' * n)})", list(range(n)))
    plans = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
    assert [p[0] for p in plans] == ["SELECT $1 || 'x'"]
    conn.close()


@pytest.mark.parametrize("count", [3, database.MANY_ROWS + 5])
def test_rows_written_many_at_once_read_back_as_written(
    db: Connection, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL many rows go in one statement, and a column of nothing but NULLs there
    # must still land in a JSON or a number column; statements are cut at 10 rows here.
    monkeypatch.setattr(database, "MANY_PARAMETERS", 60)
    db.execute(
        "CREATE TABLE wide (k TEXT, n TEXT, j JSON, i INTEGER, f DOUBLE PRECISION, e TEXT, "
        "PRIMARY KEY (k, n))"
    )
    rows = [(f"k{i % 3}", f"n{i}", json.dumps({"i": i}), i, i / 2, None) for i in range(count)]
    insert_many(db, "wide", ("k", "n", "j", "i", "f", "e"), rows)
    changed = [(None, i * 10, None, "it's", f"k{i % 3}", f"n{i}") for i in range(0, count, 2)]
    kinds = (("j", "json"), ("i", "integer"), ("f", "float8"), ("e", "text"))
    update_many(db, "wide", kinds, ("k", "n"), changed)
    expected = [
        (k, n, None, i * 10, None, "it's") if i % 2 == 0 else (k, n, j, i, f, e)
        for k, n, j, i, f, e in rows
    ]
    got = db.execute("SELECT k, n, j, i, f, e FROM wide").fetchall()
    assert sorted(tuple(r) for r in got) == sorted(expected)
