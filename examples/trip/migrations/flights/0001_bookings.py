"""The flights service's bookings, and the idempotency ledger."""

from examples.trip.tables import create_bookings
from saga_app import create_ledger_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_ledger_tables()
    create_bookings()
