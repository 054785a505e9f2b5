"""Alembic migrations of a database (SQLite or PostgreSQL), as the saga store and every
service run them.

A database's revision is checked with one query, and Alembic (half a second to import) is
imported only when there is a revision to run. An upgrade is one transaction, so it is all
or nothing, and one process at a time (SQLite's write lock, taken up front; on PostgreSQL
an advisory lock named after the schema, which the upgrade creates where missing): a
second process that starts alongside finds the revision again once it holds the lock, and
has nothing to do. A database from before Alembic is first stamped with the revision it
equals.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saga_core import database
from saga_core.database import Connection
from saga_core.errors import ConfigError

#: Where the migrations' environment (``env.py``) finds the connection to migrate.
CONNECTION = "connection"

#: Alembic's environment, one for every set of revisions.
ENVIRONMENT = Path(__file__).with_name("migration_env")


def revision(conn: Connection) -> str | None:
    """The database's revision; None where Alembic has not touched it (new, or older)."""
    if database.dialect(conn) == database.POSTGRESQL:
        if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row[0])
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else str(row[0])


def config(versions: Path, connection: Any) -> Any:
    """Alembic's configuration for the revisions in folder ``versions``, run on
    ``connection`` (SQLAlchemy's)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ENVIRONMENT))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(versions))
    cfg.attributes[CONNECTION] = connection
    return cfg


def upgrade(
    conn: Connection,
    head: str,
    versions: Path,
    adopt: Callable[[Any], str | None] = lambda _: None,
) -> str | None:
    """Bring the database on ``conn`` to ``head``, the newest of the revisions in folder
    ``versions``; returns the revision it had (None: new).

    ``adopt`` tells, from a SQLAlchemy connection to a database Alembic has not touched,
    the revision it equals (None: an empty database)."""
    found = revision(conn)
    if found == head:
        return found
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.util import CommandError

    engine, path = _engine(conn)
    try:
        with engine.begin() as connection:
            found = MigrationContext.configure(connection).get_current_revision()
            cfg = config(versions, connection)
            if found is None:
                found = adopt(connection)
                if found is not None:
                    command.stamp(cfg, found)
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:  # a revision this code does not know: newer
                raise ConfigError(
                    f"database {path} is at revision {found}, which this code does not know "
                    f"(its newest is {head}): {exc}"
                ) from None
            return found
    finally:
        engine.dispose()


def _engine(conn: Connection) -> tuple[Any, str]:
    """A SQLAlchemy engine on the database of ``conn`` whose transactions take the lock
    that makes an upgrade one process at a time; and the database's name, for errors."""
    import sqlalchemy

    if database.dialect(conn) == database.POSTGRESQL:
        from saga_core import postgres

        url, schema = conn.url, conn.schema  # type: ignore[attr-defined]
        engine = sqlalchemy.create_engine(
            postgres.sqlalchemy_url(url),
            connect_args={"options": postgres.options(schema)},
            poolclass=sqlalchemy.pool.NullPool,
        )

        @sqlalchemy.event.listens_for(engine, "begin")
        def _schema_lock(connection: Any) -> None:
            connection.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(hashtext(%(name)s))", {"name": f"migrate {schema}"}
            )
            connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

        return engine, f"{database.redact(url)} schema {schema}"

    path = conn.execute("PRAGMA database_list").fetchone()[2]
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")

    @sqlalchemy.event.listens_for(engine, "connect")
    def _own_transactions(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None  # the BEGIN below, not the driver's

    @sqlalchemy.event.listens_for(engine, "begin")
    def _write_lock(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine, path
