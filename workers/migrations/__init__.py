"""Each service's database migrations (Alembic), one folder of revisions per service, one
source for every database a service runs on. Every service's first revision creates the
idempotency ledger's tables (:func:`create_ledger_tables`) beside its own.

A service database from before Alembic (its tables made with ``CREATE TABLE IF NOT
EXISTS``) is stamped with its first revision, which it equals.
"""

from __future__ import annotations

from pathlib import Path

SCRIPTS = Path(__file__).parent

#: Each service's newest revision (a test keeps them equal to the heads of its folder).
HEADS = {"inventory": "0001", "payment": "0002", "shipping": "0001", "notification": "0001"}


def create_ledger_tables() -> None:
    """The idempotency ledger (``workers.ledger``), as every service's first revision
    creates it. Shipped in those revisions: never change it; add a revision instead."""
    import sqlalchemy as sa
    from alembic import op

    op.create_table(
        "idempotency",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("operation", sa.Text),
        sa.Column(
            "action_status",
            sa.Text,
            sa.CheckConstraint("action_status IN ('done', 'rejected', 'blocked')"),
        ),
        sa.Column("action_result", sa.Text),
        sa.Column("compensation", sa.Text),
        sa.Column(
            "compensation_status", sa.Text, sa.CheckConstraint("compensation_status IN ('done')")
        ),
        sa.Column("compensation_result", sa.Text),
        sa.Column("updated_at", sa.Text, nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("unfinished", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("key", "operation"),
    )
