"""The saga database's schema: Alembic migrations (``saga_store/migrations``), one source
for every database the store runs on.

Opening a store checks its revision with one query and imports Alembic only when there is
something to do: a new store, an upgrade, or a store from before Alembic, whose ``PRAGMA
user_version`` (1-4) names the revision it is stamped at before the upgrade.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

MIGRATIONS = Path(__file__).with_name("migrations")

#: The newest revision (a test keeps it equal to the head of ``migrations/versions``).
HEAD = "0004"

#: ``PRAGMA user_version`` of a store made before Alembic → the revision it equals.
BEFORE_ALEMBIC = {1: "0001", 2: "0002", 3: "0003", 4: "0004"}


def revision(conn: Any) -> str | None:
    """The store's revision; None for a store Alembic has not touched (new, or older)."""
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else str(row[0])


def migrate(conn: sqlite3.Connection) -> str | None:
    """Bring the store on ``conn`` to :data:`HEAD`; returns the revision it had (None: a
    new store). All or nothing, and one process at a time: the upgrade is one
    ``BEGIN IMMEDIATE`` transaction, which finds the revision again once it holds the lock."""
    found = revision(conn)
    if found == HEAD:
        return found
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    return _upgrade(path)


def alembic_config(connection: Any) -> Any:
    """Alembic's configuration for migrating the store on ``connection`` (SQLAlchemy's)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(path: str) -> str | None:
    import sqlalchemy
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.util import CommandError

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")

    @sqlalchemy.event.listens_for(engine, "connect")
    def _own_transactions(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None  # the BEGIN below, not the driver's

    @sqlalchemy.event.listens_for(engine, "begin")
    def _write_lock(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with engine.begin() as connection:
            found = MigrationContext.configure(connection).get_current_revision()
            config = alembic_config(connection)
            if found is None:
                before = connection.exec_driver_sql("PRAGMA user_version").scalar()
                if before:
                    found = BEFORE_ALEMBIC[int(before)]
                    command.stamp(config, found)
            try:
                command.upgrade(config, "head")
            except CommandError as exc:  # a revision this code does not know: newer
                raise RuntimeError(
                    f"the saga database is at revision {found}, which this code does not "
                    f"know (its newest is {HEAD}): {exc}"
                ) from None
            return found
    finally:
        engine.dispose()
