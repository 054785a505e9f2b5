"""Shipments, and the idempotency ledger."""

import sqlalchemy as sa
from alembic import op

from saga_app import create_ledger_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_ledger_tables()
    op.create_table(
        "shipments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.Column("tracking_number", sa.Text, nullable=False, unique=True),
        sa.Column(
            "state",
            sa.Text,
            sa.CheckConstraint("state IN ('created', 'cancelled')"),
            nullable=False,
        ),
    )
