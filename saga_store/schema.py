"""The saga database's schema: Alembic migrations (``saga_store/migrations``), one source
for every database the store runs on (``saga_core.migrations`` runs them).

A store from before Alembic says its schema version in ``PRAGMA user_version`` (1-4): it
is stamped with the matching revision before the upgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saga_core import migrations
from saga_core.database import Connection
from saga_core.migrations import revision

MIGRATIONS = Path(__file__).with_name("migrations") / "versions"

#: The newest revision (a test keeps it equal to the head of :data:`MIGRATIONS`).
HEAD = "0006"

#: ``PRAGMA user_version`` of a store made before Alembic → the revision it equals.
BEFORE_ALEMBIC = {1: "0001", 2: "0002", 3: "0003", 4: "0004"}

__all__ = ["HEAD", "MIGRATIONS", "alembic_config", "migrate", "revision"]


def migrate(conn: Connection) -> str | None:
    """Bring the store on ``conn`` to :data:`HEAD`; returns the revision it had (None: a
    new store)."""
    return migrations.upgrade(conn, HEAD, MIGRATIONS, adopt=_before_alembic)


def alembic_config(connection: Any) -> Any:
    """Alembic's configuration for migrating the store on ``connection`` (SQLAlchemy's)."""
    return migrations.config(MIGRATIONS, connection)


def _before_alembic(connection: Any) -> str | None:
    if connection.dialect.name != "sqlite":
        return None  # the store came to PostgreSQL with Alembic
    version = connection.exec_driver_sql("PRAGMA user_version").scalar()
    return BEFORE_ALEMBIC[int(version)] if version else None
