"""The saga store's migrations on PostgreSQL: the same revisions as on SQLite build the same
tables, with the history append-only and the state words checked. Each test in a schema
of its own, dropped after. Skipped where no PostgreSQL answers (under CI it fails)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from alembic import command

from saga_store import schema

URL = os.environ.get("SAGA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres() -> Iterator[Any]:
    """A SQLAlchemy engine on a schema of the test's own."""
    psycopg = pytest.importorskip("psycopg")
    name = f"saga_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL answers at {URL} (SAGA_TEST_POSTGRES_URL): {exc}")
    admin.execute(f"CREATE SCHEMA {name}")
    engine = sqlalchemy.create_engine(
        URL.replace("postgresql://", "postgresql+psycopg://", 1),
        connect_args={"options": f"-c search_path={name}"},
    )
    try:
        yield engine
    finally:
        engine.dispose()
        admin.execute(f"DROP SCHEMA {name} CASCADE")
        admin.close()


def test_the_store_s_migrations_build_its_tables_on_postgresql(postgres: Any) -> None:
    with postgres.begin() as conn:
        command.upgrade(schema.alembic_config(conn), "head")
    with postgres.begin() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == (
            schema.HEAD
        )
        tables = {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        }
        assert {"sagas", "saga_steps", "saga_events", "alerts", "counters"} <= tables
        conn.exec_driver_sql(
            "INSERT INTO sagas (id, state, input, created_at, updated_at, definition) "
            "VALUES ('s1', 'pending', '{}', 'now', 'now', 'order')"
        )
        conn.exec_driver_sql(
            "INSERT INTO saga_events (saga_id, at, event, actor) "
            "VALUES ('s1', 1.5, 'created', 'client')"
        )
    # the history is append-only, and a state word the machine does not know is refused
    for statement, problem in (
        ("UPDATE saga_events SET note = 'x'", "append-only"),
        ("DELETE FROM saga_events", "append-only"),
        ("UPDATE sagas SET state = 'done'", "check constraint"),
    ):
        with pytest.raises(sqlalchemy.exc.DBAPIError, match=problem), postgres.begin() as conn:
            conn.exec_driver_sql(statement)
