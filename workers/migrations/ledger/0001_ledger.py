"""The idempotency ledger alone: the database of a service that declares no tables of its
own (its effects are made through an outside system that takes the step's key)."""

from workers.migrations import create_ledger_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_ledger_tables()
