"""Liveness: when anything was last heard of a step in flight (its dispatch, or a worker's
heartbeat listing it), who holds it, and the workers that heartbeat (schema version 4)."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("saga_steps", sa.Column("heard_at", sa.Float(53)))
    op.add_column("saga_steps", sa.Column("held_by", sa.Text))
    op.execute(
        "UPDATE saga_steps SET heard_at = deadline_at - timeout WHERE deadline_at IS NOT NULL"
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("services", sa.Text, nullable=False),  # comma-separated
        sa.Column("interval", sa.Float(53), nullable=False),
        sa.Column("held", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.Float(53), nullable=False),
        sa.Column("last_seen", sa.Float(53), nullable=False),
        sa.PrimaryKeyConstraint("name", "pid"),
    )
