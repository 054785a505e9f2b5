"""The bookings table that the flights, hotels and cars services each keep in their own
database, as their first migration creates it."""

import sqlalchemy as sa
from alembic import op


def create_bookings() -> None:
    op.create_table(
        "bookings",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("reference", sa.Text, nullable=False, index=True),
        sa.Column("item", sa.Text, nullable=False),
        sa.Column(
            "state",
            sa.Text,
            sa.CheckConstraint("state IN ('booked', 'cancelled')"),
            nullable=False,
        ),
    )
