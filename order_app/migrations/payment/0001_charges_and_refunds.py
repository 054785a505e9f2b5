"""Charges and refunds, and the idempotency ledger."""

import sqlalchemy as sa
from alembic import op

from saga_app import create_ledger_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_ledger_tables()
    op.create_table(
        "charges",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("card_token", sa.Text, nullable=False),
        sa.Column("card_last4", sa.Text, nullable=False),
        sa.Column("amount_cents", sa.Integer, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column(
            "state", sa.Text, sa.CheckConstraint("state IN ('charged', 'refunded')"), nullable=False
        ),
    )
    op.create_table(
        "refunds",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("charge_id", sa.Text, sa.ForeignKey("charges.id"), nullable=False),
        sa.Column("amount_cents", sa.Integer, nullable=False),
    )
