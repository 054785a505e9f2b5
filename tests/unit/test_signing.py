"""Signed messages (``saga_core.signing``): what a receiver accepts, and what it refuses."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from saga_app import configured
from saga_core import config
from saga_core.errors import ConfigError
from saga_core.messages import Outcome, Phase, Status
from saga_core.signing import Keyring, RefusalCount, Refused, new_keys, require
from tests.helpers import IDENTITIES

KEYS = new_keys(IDENTITIES)


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def outcome_wire() -> dict[str, Any]:
    return Outcome("s1", "charge_payment", Phase.ACTION, 1, Status.SUCCEEDED, 1, {"c": 1}).to_wire()


def refusal(keyring: Keyring, kind: str, body: Any) -> str:
    with pytest.raises(Refused) as caught:
        keyring.check(kind, body)
    return caught.value.reason


def test_a_signed_message_names_its_signer_after_a_trip_through_json() -> None:
    keyring = Keyring(KEYS)
    body = keyring.sign("outcome", outcome_wire(), ["payment"])
    assert keyring.check("outcome", json.loads(json.dumps(body))) == {"payment"}


def test_a_receiver_holding_only_its_own_key_checks_the_sender_it_shares_it_with() -> None:
    orchestrator, payment = Keyring(KEYS), Keyring({"payment": KEYS["payment"]})
    command = orchestrator.sign("command:charge_payment", {"v": 1, "x": 1}, ["payment"])
    assert payment.check("command:charge_payment", command) == {"payment"}
    other = orchestrator.sign("command:charge_payment", {"v": 1, "x": 1}, ["inventory"])
    assert refusal(payment, "command:charge_payment", other) == "unknown_signer"


def test_unsigned_changed_and_relabelled_messages_are_refused() -> None:
    keyring = Keyring(KEYS)
    body = keyring.sign("outcome", outcome_wire(), ["payment"])
    assert refusal(keyring, "outcome", outcome_wire()) == "unsigned"
    changed = {**body, "output": {"c": 2}}
    assert refusal(keyring, "outcome", changed) == "bad_signature"
    # a command's signature does not make it an outcome, nor one operation's another's
    assert refusal(keyring, "heartbeat", body) == "bad_signature"
    command = keyring.sign("command:refund_payment", {"v": 1}, ["payment"])
    assert refusal(keyring, "command:charge_payment", command) == "bad_signature"
    claimed = {**body, "sig": {**body["sig"], "by": {"inventory": body["sig"]["by"]["payment"]}}}
    assert refusal(keyring, "outcome", claimed) == "bad_signature"
    for sig in (
        "x",
        {"at": "now", "by": {}},
        {"at": 1.0, "by": {}},
        {"at": True, "by": {"a": "b"}},
    ):
        assert refusal(keyring, "outcome", {**body, "sig": sig}) == "malformed"


def test_a_key_of_another_service_does_not_stand_in_for_the_right_one() -> None:
    keyring = Keyring(KEYS)
    body = keyring.sign("outcome", outcome_wire(), ["inventory"])
    signers = keyring.check("outcome", body)
    with pytest.raises(Refused) as caught:
        require(signers, "payment", "outcome")
    assert caught.value.reason == "wrong_signer"
    require(None, "payment", "outcome")  # signing off: nothing to require


def test_a_message_outside_the_replay_window_is_refused() -> None:
    clock = Clock()
    keyring = Keyring(KEYS, window=300, clock=clock)
    body = keyring.sign("outcome", outcome_wire(), ["payment"])
    clock.now += 299
    assert keyring.check("outcome", body) == {"payment"}
    clock.now += 2
    assert refusal(keyring, "outcome", body) == "expired"
    clock.now -= 700  # signed "in the future": a skewed or forged clock
    assert refusal(keyring, "outcome", body) == "expired"


def test_during_a_rotation_both_keys_are_accepted_and_the_first_signs() -> None:
    old, new = KEYS["payment"][0], new_keys(["payment"])["payment"][0]
    before, during = Keyring({"payment": (old,)}), Keyring({"payment": (new, old)})
    after = Keyring({"payment": (new,)})
    by_old = before.sign("outcome", outcome_wire(), ["payment"])
    by_new = during.sign("outcome", outcome_wire(), ["payment"])
    assert during.check("outcome", by_old) == during.check("outcome", by_new) == {"payment"}
    assert after.check("outcome", by_new) == {"payment"}
    assert refusal(after, "outcome", by_old) == "bad_signature"


def test_without_keys_nothing_is_signed_or_checked() -> None:
    keyring = Keyring({})
    assert not keyring.on
    assert keyring.sign("outcome", outcome_wire(), ["payment"]) == outcome_wire()
    assert keyring.check("outcome", outcome_wire()) is None


def test_refusals_are_counted_by_reason() -> None:
    count = RefusalCount()
    count.refused("command:charge_payment", "unsigned")
    count.refused("command:charge_payment", "unsigned")
    count.refused("command:charge_payment", "expired")
    assert count.snapshot() == {"unsigned": 2, "expired": 1}


def test_keys_come_from_a_file_and_the_environment_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"payment": ["p" * 32, "q" * 32], "inventory": "i" * 32}))
    settings = config.load({"SAGA_KEYS_FILE": str(path), "SAGA_INVENTORY_KEY": "j" * 40})
    assert settings.keys == {"payment": ("p" * 32, "q" * 32), "inventory": ("j" * 40,)}
    # what a child process is given loads the same keys
    assert config.load(settings.to_env()).keys == settings.keys


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SAGA_PAYMENT_KEY": "short"}, "SAGA_PAYMENT_KEY: a key must be at least 32"),
        ({"SAGA_PAYMENT_KEY": "a" * 32 + " b"}, "no spaces"),
        ({"SAGA_KEYS_FILE": "/nonexistent/keys.json"}, "cannot read /nonexistent/keys.json"),
    ],
)
def test_a_bad_key_setting_is_refused_naming_it_and_not_showing_the_key(
    env: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(env)
    assert names in caught.value.message
    assert "a" * 32 not in caught.value.message


def test_a_keys_file_naming_what_cannot_be_a_service_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"Billing Dept": "b" * 32}))
    with pytest.raises(ConfigError, match="'Billing Dept' cannot name a service"):
        config.load({"SAGA_KEYS_FILE": str(path)})
    # a service of some app (which this process's app may have or not) is taken
    path.write_text(json.dumps({"billing": "b" * 32}))
    assert config.load({"SAGA_KEYS_FILE": str(path)}).keys["billing"] == ("b" * 32,)


def test_the_data_directory_s_keys_grow_with_the_app(tmp_path: Path) -> None:
    first = config.keys_of_data_dir(tmp_path / "keys.json", ["payment", "client"])
    grown = config.keys_of_data_dir(tmp_path / "keys.json", ["payment", "client", "billing"])
    assert grown["payment"] == first["payment"] and set(grown) == {"payment", "client", "billing"}
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


def test_with_signing_on_a_process_without_its_key_does_not_start() -> None:
    settings = config.load({"SAGA_PAYMENT_KEY": "p" * 32})
    assert settings.keyring(["payment"]).on
    with pytest.raises(ConfigError, match="SAGA_SHIPPING_KEY is not"):
        settings.keyring(["payment", "shipping"])
    assert not config.load({"SAGA_INSECURE": "1"}).keyring(["payment"]).on


def test_without_keys_one_machine_signs_with_the_keys_of_its_data_dir(tmp_path: Path) -> None:
    # Given no keys configured, a store in the data directory and a broker on loopback
    env = {"SAGA_DATA_DIR": str(tmp_path / "data")}
    first = configured(config.load(env)).keyring(["payment"])
    # Then the first process makes the keys file, readable by its owner only, and every
    # process of the data directory signs with the same keys
    path = tmp_path / "data" / config.KEYS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(path.read_text())) == set(IDENTITIES)
    second = config.load(env).keyring(IDENTITIES)
    body = first.sign("outcome", {"a": 1}, ["payment"])
    assert second.check("outcome", body) == {"payment"}
    assert [p.name for p in path.parent.iterdir()] == [config.KEYS_FILE]  # no draft left


@pytest.mark.parametrize(
    "env",
    [
        {"SAGA_DATABASE_URL": "postgresql://db.example/saga"},
        {"SAGA_BROKER_URL": "redis://broker.example:6379/0"},
        {"SAGA_BROKER_URL": "amqp://guest:guest@10.0.0.7//"},
    ],
    ids=["postgresql", "remote redis", "remote rabbitmq"],
)
def test_without_keys_a_system_beyond_one_machine_does_not_start(
    env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "SAGA_DATA_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"no message signing keys.*SAGA_INSECURE=1"):
        config.load(env).keyring(["payment"])
    assert not (tmp_path / config.KEYS_FILE).exists()
    assert not config.load({**env, "SAGA_INSECURE": "1"}).keyring(["payment"]).on


def test_a_heartbeat_vouches_only_for_commands_whose_signature_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from celery.worker import state

    from saga_core.messages import Command, Phase
    from saga_core.retry import RetryPolicy
    from workers.heartbeat import held

    keys = new_keys(["payment", "inventory"])
    now = Keyring(keys)
    an_hour_ago = Keyring(keys, clock=lambda: time.time() - 3600)

    def request(n: int, keyring: Keyring | None, signer: str = "payment") -> SimpleNamespace:
        c = Command(
            "charge_payment", f"s-{n}", "charge_payment", Phase.ACTION, 1, {}, RetryPolicy()
        )
        body = c.to_wire() if keyring is None else keyring.sign(c.kind, c.to_wire(), [signer])
        return SimpleNamespace(id=str(n), name=c.operation, args=[body])

    # Given a worker holding a signed command, an unsigned one (waiting for its ETA), one
    # signed by another service, and two signed an hour ago: one running, one waiting
    requests = [
        request(1, now),
        request(2, None),
        request(3, now, "inventory"),
        request(4, an_hour_ago),
        request(5, an_hour_ago),
    ]
    monkeypatch.setattr(state, "requests", {r.id: r for r in requests})
    monkeypatch.setattr(state, "active_requests", [requests[3]])
    # Then its heartbeat names the signed one, and the old one that started when it was fresh
    vouched = held({"charge_payment": "payment"}, now)
    assert [h.saga_id for h in vouched] == ["s-1", "s-4"]
