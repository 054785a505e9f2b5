"""Sagas, their steps, alerts and counters (schema version 1)."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

SAGA_STATES = "'pending','running','completed','compensating','compensated','failed'"
STEP_STATES = "'pending','running','completed','failed','compensating','compensated'"
ACTIVE = sa.text("state IN ('pending', 'running', 'compensating')")


def upgrade() -> None:
    op.create_table(
        "sagas",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column(
            "state", sa.Text, sa.CheckConstraint(f"state IN ({SAGA_STATES})"), nullable=False
        ),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("error", sa.Text),
    )
    op.create_index(
        "sagas_by_state", "sagas", ["state"], sqlite_where=ACTIVE, postgresql_where=ACTIVE
    )
    op.create_table(
        "saga_steps",
        sa.Column("saga_id", sa.Text, sa.ForeignKey("sagas.id"), nullable=False),
        sa.Column("step_name", sa.Text, nullable=False),
        sa.Column(
            "state", sa.Text, sa.CheckConstraint(f"state IN ({STEP_STATES})"), nullable=False
        ),
        sa.Column("output", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("compensable", sa.Integer, nullable=False),
        sa.Column("best_effort", sa.Integer, nullable=False),
        sa.Column("timeout", sa.Float(53), nullable=False),
        sa.Column("max_dispatches", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("compensation_attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("deadline_at", sa.Float(53)),
        sa.PrimaryKeyConstraint("saga_id", "step_name"),
    )
    armed = sa.text("deadline_at IS NOT NULL")
    op.create_index(
        "saga_steps_by_deadline",
        "saga_steps",
        ["deadline_at"],
        sqlite_where=armed,
        postgresql_where=armed,
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("saga_id", sa.Text, sa.ForeignKey("sagas.id"), nullable=False),
        sa.Column("step_name", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("resolved_at", sa.Text),
    )
    op.create_index("alerts_by_saga", "alerts", ["saga_id"])
    op.create_table(
        "counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )
