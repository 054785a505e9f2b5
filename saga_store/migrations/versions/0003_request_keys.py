"""Idempotency keys of API requests; sagas by creation, for paging (schema version 3)."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "request_keys",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("saga_id", sa.Text, sa.ForeignKey("sagas.id"), nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
    )
    op.create_index("sagas_by_created", "sagas", ["created_at", "id"])
