"""The saga store's migrations (Alembic): a new store, and the store files of releases
before Alembic, upgraded in place with their sagas kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from saga_core import migrations
from saga_core.errors import ConfigError
from saga_store import SagaState, open_reader, open_store, queries, schema
from saga_store import transitions as t
from tests.helpers import SERVICES
from tests.unit.data.before_alembic import make_service_db, make_store
from tests.unit.test_transitions import STEPS as SPECS
from workers import migrations as service_migrations
from workers.service import Service


def shape(conn: Any) -> dict[str, Any]:
    """Every table's columns (name, type affinity, not null, default, key), indexes (with
    their columns, uniqueness and condition) and triggers: what a query can tell apart."""

    def affinity(declared: str) -> str:
        return "REAL" if declared in ("REAL", "FLOAT") else declared

    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name != 'alembic_version' ORDER BY name"
        )
    ]
    found: dict[str, Any] = {}
    for table in tables:
        # A key column is NOT NULL in the migrations; SQLite let the old TEXT keys hold a
        # NULL, which no row ever did.
        columns = [
            (c[1], affinity(c[2]), int(c[3] or c[5] > 0), c[4], c[5])
            for c in conn.execute(f"PRAGMA table_info({table})")
        ]
        indexes = {}
        for index in conn.execute(f"PRAGMA index_list({table})"):
            if index[3] != "c":  # made by a constraint (a key, UNIQUE): compared as columns
                continue
            cols = [c[2] for c in conn.execute(f"PRAGMA index_info({index[1]})")]
            sql = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = ?", (index[1],)
            ).fetchone()[0]
            where = sql.split(" WHERE ", 1)[1].strip() if " WHERE " in sql else None
            indexes[index[1]] = (cols, index[2], where)
        found[table] = {"columns": columns, "indexes": indexes}
    found["triggers"] = sorted(
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    )
    return found


def test_head_is_the_newest_migration() -> None:
    config = schema.alembic_config(None)
    assert ScriptDirectory.from_config(config).get_current_head() == schema.HEAD


def test_a_new_store_has_the_schema_of_one_upgraded_from_before_alembic(tmp_path: Path) -> None:
    new = open_store(tmp_path / "new.db")
    make_store(str(tmp_path / "old.db"), version=4).close()
    assert shape(new) == shape(open_store(tmp_path / "old.db"))


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_a_store_from_before_alembic_is_upgraded_with_its_sagas(
    tmp_path: Path, version: int
) -> None:
    # Given a store file an earlier release left, with a saga under way
    path = tmp_path / "sagas.db"
    old = make_store(str(path), version)
    old.execute(
        "INSERT INTO sagas (id, state, input, created_at, updated_at, definition) "
        """VALUES ('s1', 'running', '{"x": 1}', 'then', 'then', 'order')"""
    )
    for position, spec in enumerate(SPECS):
        old.execute(
            "INSERT INTO saga_steps (saga_id, step_name, state, position, compensable, "
            "best_effort, timeout, max_dispatches, attempts, deadline_at) "
            "VALUES ('s1', ?, ?, ?, ?, ?, 30, 5, ?, ?)",
            (
                spec.name,
                "running" if position == 0 else "pending",
                position,
                int(spec.compensable),
                int(spec.best_effort),
                int(position == 0),
                130.0 if position == 0 else None,
            ),
        )
    old.execute("INSERT INTO counters (name, value) VALUES ('sagas_started', 7)")
    old.close()
    # When this release opens it
    db = open_store(path)
    # Then it is at the newest revision, shaped as a new store, and the saga goes on
    assert schema.revision(db) == schema.HEAD
    assert shape(db) == shape(open_store(tmp_path / "new.db"))
    view = queries.get_saga(db, "s1")
    assert view.state is SagaState.RUNNING and view.input == {"x": 1}
    if version < 4:  # liveness came with version 4: the dispatch is the last news of a step
        heard = db.execute("SELECT heard_at FROM saga_steps WHERE position = 0").fetchone()[0]
        assert heard == 100.0
    t.complete_step(db, "s1", SPECS[0].name, {"ok": True}, 200.0)
    assert queries.get_saga(db, "s1").step(SPECS[1].name).state.value == "running"
    t.count(db, "sagas_started")  # counted in a shard of this process's, added up when read
    assert queries.counters(db)["sagas_started"] == 8
    assert open_reader(path).execute("SELECT COUNT(*) FROM sagas").fetchone()[0] == 1


def test_a_store_of_a_newer_release_is_refused_naming_its_revision(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    open_store(path).execute("UPDATE alembic_version SET version_num = '0999'")
    with pytest.raises(ConfigError, match="revision 0999, which this code does not know"):
        open_store(path)


# --- the services' databases ------------------------------------------------------------


@pytest.mark.parametrize("name", [*SERVICES, None])
def test_each_service_s_head_is_its_newest_migration(name: str | None) -> None:
    service = SERVICES[name] if name else Service("ledger-only")
    folder = service.migrations or service_migrations.LEDGER_ONLY
    head = service.head or service_migrations.LEDGER_ONLY_HEAD
    config = migrations.config(folder, None)
    assert ScriptDirectory.from_config(config).get_current_head() == head


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_database_from_before_alembic_is_kept_and_shaped_as_a_new_one(
    tmp_path: Path, name: str
) -> None:
    service = SERVICES[name]
    (tmp_path / "old").mkdir()
    old = make_service_db(str(tmp_path / "old" / f"{name}.db"), name)
    old.execute(
        "INSERT INTO idempotency (key, operation, action_status, updated_at) "
        "VALUES ('s1:a', 'x', 'done', 'then')"
    )
    old.close()
    kept = service.database(tmp_path / "old")
    assert migrations.revision(kept) == service.head
    assert kept.execute("SELECT key FROM idempotency").fetchall()[0][0] == "s1:a"
    assert shape(kept) == shape(service.database(tmp_path / "new"))


def test_card_tokens_hashed_from_the_number_are_rewritten(tmp_path: Path) -> None:
    import hashlib
    import json

    from order_app import payment

    number = "4000056655665556"
    hashed = "tok_" + hashlib.sha256(number.encode()).hexdigest()[:24]
    # Given a store and a payment database an earlier release left, with the token it made
    # as a hash of the card number, a test card's token, and a request fingerprinted from a
    # body that held the number
    old = make_store(str(tmp_path / "sagas.db"), 4)
    for saga_id, token in (("s1", hashed), ("s2", "tok_visa")):
        document = {"order_id": saga_id, "card": {"token": token, "last4": "5556"}}
        old.execute(
            "INSERT INTO sagas (id, state, input, created_at, updated_at, definition) "
            "VALUES (?, 'completed', ?, 'then', 'then', 'order')",
            (saga_id, json.dumps(document)),
        )
    old.execute("INSERT INTO request_keys VALUES ('k1', 'sha-of-a-body', 's1', 'then')")
    old.commit()
    old.close()
    (tmp_path / "services").mkdir()
    db = make_service_db(str(tmp_path / "services" / "payment.db"), "payment")
    db.execute(
        "INSERT INTO charges (id, reference, card_token, card_last4, amount_cents, currency, "
        "state) VALUES ('ch_1', 's1', ?, '5556', 100, 'EUR', 'charged')",
        (hashed,),
    )
    db.commit()
    db.close()
    # When this release opens them
    store = open_store(tmp_path / "sagas.db")
    charges = payment.service.database(tmp_path / "services")
    # Then no token is the number's hash any more: each is random, test cards' kept
    token = queries.get_saga(store, "s1").input["card"]["token"]
    charged = charges.execute("SELECT card_token FROM charges").fetchone()[0]
    for rewritten in (token, charged):
        assert rewritten != hashed and len(rewritten) == len("tok_") + 32
    assert queries.get_saga(store, "s2").input["card"]["token"] == "tok_visa"
    # and the old fingerprint is cleared: the key's saga answers any request with the key
    saga_id, created = t.create_saga(
        store, "s9", "order", {}, SPECS, 1.0, idempotency_key="x", request_key=("k1", "any")
    )
    assert (saga_id, created) == ("s1", False)
