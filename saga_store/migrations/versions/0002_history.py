"""The saga history, append-only; how an alert was resolved (schema version 2)."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

NEVER = "the saga history is append-only"


def upgrade() -> None:
    op.create_table(
        "saga_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("saga_id", sa.Text, sa.ForeignKey("sagas.id"), nullable=False),
        # seconds since the epoch: no formatting on the hot path
        sa.Column("at", sa.Float(53), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("step_name", sa.Text),
        sa.Column("phase", sa.Text, sa.CheckConstraint("phase IN ('action', 'compensation')")),
        sa.Column("attempt", sa.Integer),
        sa.Column("tries", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("actor", sa.Text, nullable=False),
    )
    op.create_index("saga_events_by_saga", "saga_events", ["saga_id", "id"])
    op.add_column("alerts", sa.Column("resolution", sa.Text))
    if op.get_bind().dialect.name == "sqlite":
        for when in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER saga_events_are_never_{when.lower()}d BEFORE {when} "
                f"ON saga_events BEGIN SELECT RAISE(ABORT, '{NEVER}'); END"
            )
    else:
        op.execute(
            "CREATE FUNCTION saga_events_are_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{NEVER}'; END $$"
        )
        for when in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER saga_events_are_never_{when.lower()}d BEFORE {when} "
                "ON saga_events FOR EACH ROW EXECUTE FUNCTION saga_events_are_append_only()"
            )
