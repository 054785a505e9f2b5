"""The outbox of confirmations sent, and the idempotency ledger."""

import sqlalchemy as sa
from alembic import op

from saga_app import create_ledger_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_ledger_tables()
    op.create_table(
        "outbox",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("sent_at", sa.Text, nullable=False),
    )
