"""Counters in shards: each process adds to a row of its own (``counters.shard``), so
orchestrators that share a store do not queue on one row per counter; readers add the
shards up."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.rename_table("counters", "counters_unsharded")
    op.create_table(
        "counters",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("shard", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("value", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("name", "shard", name="counters_by_shard"),
    )
    op.execute(
        "INSERT INTO counters (name, shard, value) SELECT name, 0, value FROM counters_unsharded"
    )
    op.drop_table("counters_unsharded")
