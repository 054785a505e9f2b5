"""A service's database migrations (Alembic): the folder of revisions a service declares
(``Service(migrations=…, head=…)``), one source for every database it runs on. Every
service's first revision creates the idempotency ledger's tables
(:func:`create_ledger_tables`) beside its own; a service that declares none gets the
ledger alone (``ledger/``).

A service database from before Alembic (its tables made with ``CREATE TABLE IF NOT
EXISTS``) is stamped with its first revision, which it equals.
"""

from __future__ import annotations

from pathlib import Path

#: The revisions of a service that declares no tables of its own: the ledger alone.
LEDGER_ONLY = Path(__file__).parent / "ledger"
LEDGER_ONLY_HEAD = "0001"


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
