"""Stock and reservations, and the idempotency ledger."""

import sqlalchemy as sa
from alembic import op

from saga_app import create_ledger_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_ledger_tables()
    op.create_table(
        "stock",
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("on_hand", sa.Integer, sa.CheckConstraint("on_hand >= 0"), nullable=False),
        sa.Column("available", sa.Integer, sa.CheckConstraint("available >= 0"), nullable=False),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.Column(
            "state", sa.Text, sa.CheckConstraint("state IN ('held', 'released')"), nullable=False
        ),
    )
