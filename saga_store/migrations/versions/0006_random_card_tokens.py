"""Card tokens that give nothing back: each token made as a hash of the card number is
rewritten to a random one, and each request fingerprint made from a body that held the
number is cleared (schema version 6).

A token made before (``tok_`` and 24 hex digits of the number's SHA-256) can be reversed
by trying every number with the same first six and last four digits. Its random
replacement is drawn per saga: no other table compares it. A cleared fingerprint matches
any request with its key (the first request stands, as the key's saga does)."""

import json
import re
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

HASHED = re.compile(r"tok_[0-9a-f]{24}")


def upgrade() -> None:
    bind = op.get_bind()
    # the column is JSON on PostgreSQL, text on SQLite
    postgres = bind.dialect.name == "postgresql"
    text, json_value = (
        ("CAST(input AS TEXT)", "CAST(:input AS JSON)")
        if postgres
        else (
            "input",
            ":input",
        )
    )
    rows = bind.execute(sa.text(f"SELECT id, {text} FROM sagas WHERE {text} LIKE '%tok_%'"))
    for saga_id, raw in rows.fetchall():
        document = json.loads(raw)
        card = document.get("card") if isinstance(document, dict) else None
        if isinstance(card, dict) and HASHED.fullmatch(str(card.get("token"))):
            card["token"] = "tok_" + secrets.token_hex(16)
            bind.execute(
                sa.text(f"UPDATE sagas SET input = {json_value} WHERE id = :id"),
                {"input": json.dumps(document), "id": saga_id},
            )
    bind.execute(sa.text("UPDATE request_keys SET fingerprint = ''"))
