"""The saga store's schema as it was written before Alembic, under ``PRAGMA user_version``
(versions 1-4, frozen): to make the store files an earlier release left behind."""

from __future__ import annotations

import sqlite3

SAGA_STATES = "'pending','running','completed','compensating','compensated','failed'"
STEP_STATES = "'pending','running','completed','failed','compensating','compensated'"

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE sagas (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ({SAGA_STATES})),
        input JSON NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        definition TEXT NOT NULL,
        idempotency_key TEXT UNIQUE,
        error TEXT
    );
    CREATE INDEX sagas_by_state ON sagas(state)
        WHERE state IN ('pending', 'running', 'compensating');
    CREATE TABLE saga_steps (
        saga_id TEXT NOT NULL REFERENCES sagas(id),
        step_name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({STEP_STATES})),
        output JSON,
        error TEXT,
        position INTEGER NOT NULL,
        compensable INTEGER NOT NULL,
        best_effort INTEGER NOT NULL,
        timeout REAL NOT NULL,
        max_dispatches INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        compensation_attempts INTEGER NOT NULL DEFAULT 0,
        deadline_at REAL,
        PRIMARY KEY (saga_id, step_name)
    );
    CREATE INDEX saga_steps_by_deadline ON saga_steps(deadline_at) WHERE deadline_at IS NOT NULL;
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        saga_id TEXT NOT NULL REFERENCES sagas(id),
        step_name TEXT NOT NULL,
        error TEXT NOT NULL,
        created_at TEXT NOT NULL,
        resolved_at TEXT
    );
    CREATE INDEX alerts_by_saga ON alerts(saga_id);
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE saga_events (
        id INTEGER PRIMARY KEY,
        saga_id TEXT NOT NULL REFERENCES sagas(id),
        at REAL NOT NULL, -- seconds since the epoch: no formatting on the hot path
        event TEXT NOT NULL,
        step_name TEXT,
        phase TEXT CHECK (phase IN ('action', 'compensation')),
        attempt INTEGER,
        tries INTEGER,
        error TEXT,
        note TEXT,
        actor TEXT NOT NULL
    );
    CREATE INDEX saga_events_by_saga ON saga_events(saga_id, id);
    ALTER TABLE alerts ADD COLUMN resolution TEXT;
    CREATE TRIGGER saga_events_are_never_updated BEFORE UPDATE ON saga_events
    BEGIN SELECT RAISE(ABORT, 'the saga history is append-only'); END;
    CREATE TRIGGER saga_events_are_never_deleted BEFORE DELETE ON saga_events
    BEGIN SELECT RAISE(ABORT, 'the saga history is append-only'); END;
    """,
    """
    CREATE TABLE request_keys (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        saga_id TEXT NOT NULL REFERENCES sagas(id),
        created_at TEXT NOT NULL
    );
    CREATE INDEX sagas_by_created ON sagas(created_at, id);
    """,
    """
    -- Liveness: when anything was last heard of a step in flight (its dispatch, or a
    -- worker's heartbeat listing it), who holds it, and the workers that heartbeat.
    ALTER TABLE saga_steps ADD COLUMN heard_at REAL;
    ALTER TABLE saga_steps ADD COLUMN held_by TEXT;
    UPDATE saga_steps SET heard_at = deadline_at - timeout WHERE deadline_at IS NOT NULL;
    CREATE TABLE workers (
        name TEXT NOT NULL,
        pid INTEGER NOT NULL,
        services TEXT NOT NULL, -- comma-separated
        interval REAL NOT NULL,
        held INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        PRIMARY KEY (name, pid)
    );
    """,
)


def make_store(path: str, version: int) -> sqlite3.Connection:
    """A store file as that release left it, at ``version``."""
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:version]:
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


#: Each service's tables before Alembic (its ledger's and its own), frozen.
LEDGER = """
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    operation TEXT,
    action_status TEXT CHECK (action_status IN ('done', 'rejected', 'blocked')),
    action_result TEXT,
    compensation TEXT,
    compensation_status TEXT CHECK (compensation_status IN ('done')),
    compensation_result TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT NOT NULL,
    operation TEXT NOT NULL,
    unfinished INTEGER NOT NULL,
    PRIMARY KEY (key, operation)
);
"""

SERVICES = {
    "inventory": LEDGER
    + """
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT PRIMARY KEY,
    on_hand INTEGER NOT NULL CHECK (on_hand >= 0),
    available INTEGER NOT NULL CHECK (available >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    items TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('held', 'released'))
);
""",
    "payment": LEDGER
    + """
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    card_token TEXT NOT NULL,
    card_last4 TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('charged', 'refunded'))
);
CREATE TABLE IF NOT EXISTS refunds (
    id TEXT PRIMARY KEY,
    charge_id TEXT NOT NULL REFERENCES charges(id),
    amount_cents INTEGER NOT NULL
);
""",
    "shipping": LEDGER
    + """
CREATE TABLE IF NOT EXISTS shipments (
    id TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    address TEXT NOT NULL,
    items TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('created', 'cancelled'))
);
""",
    "notification": LEDGER
    + """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
""",
}


def make_service_db(path: str, service: str) -> sqlite3.Connection:
    """A service database as a release before Alembic left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SERVICES[service])
    return conn
