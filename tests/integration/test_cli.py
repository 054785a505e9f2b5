"""The ``saga`` command as a user runs it: exit status, stdout, stderr."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from saga_core.config import Settings
from saga_store import SagaState
from saga_tools.cluster import saga_command
from tests.helpers import DEFINITIONS, make_order, service_records
from tests.integration.conftest import System

ORDER_VERSION = DEFINITIONS["order"].version


def saga(settings: Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        saga_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **settings.to_env()},
    )


def write(tmp_path: Path, content: Any, name: str = "order.json") -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def stored_sagas(settings: Settings) -> list[Any]:
    result = saga(settings, "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.any_broker
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        (json.dumps(make_order(amount_cents="12")), "amount_cents: must be an integer"),
        (json.dumps(make_order(items=[{"sku": "W", "quantity": 0}])), "items[0].quantity"),
        (json.dumps(make_order(customer_email="nobody")), "customer_email"),
        (json.dumps([make_order()]), "order: must be a JSON object"),
        ("x" * (1 << 20 + 1), "larger than"),
    ],
    ids=[
        "broken JSON",
        "empty",
        "amount as text",
        "zero quantity",
        "bad email",
        "a list",
        "oversized",
    ],
)
def test_bad_order_exits_2_and_stores_nothing(
    settings: Settings, tmp_path: Path, content: str, message: str
) -> None:
    result = saga(settings, "submit", write(tmp_path, content))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert stored_sagas(settings) == []


@pytest.mark.any_broker
def test_missing_file_and_unknown_saga_exit_2(settings: Settings, tmp_path: Path) -> None:
    result = saga(settings, "submit", str(tmp_path / "nope.json"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    result = saga(settings, "status", "no-such-saga")
    assert result.returncode == 2 and "no saga with id 'no-such-saga'" in result.stderr


@pytest.mark.any_broker
def test_bad_setting_is_named(settings: Settings) -> None:
    result = subprocess.run(
        saga_command("list"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **settings.to_env(), "SAGA_STEP_TIMEOUT": "x"},
    )
    assert result.returncode == 2 and "SAGA_STEP_TIMEOUT" in result.stderr


@pytest.mark.any_broker
def test_stock(settings: Settings) -> None:
    assert saga(settings, "stock", "set", "WIDGET", "7").returncode == 0
    listed = json.loads(saga(settings, "stock", "--json").stdout)
    assert listed == [{"sku": "WIDGET", "on_hand": 7, "available": 7, "reserved": 0}]
    bad = saga(settings, "stock", "set", "WIDGET", "lots")
    assert bad.returncode == 2 and "QUANTITY must be a whole number" in bad.stderr
    negative = saga(settings, "stock", "set", "WIDGET", "-1")
    assert negative.returncode == 2 and "cannot be negative" in negative.stderr
    # seed: a stack's first start stocks what is not stocked yet, and resets nothing
    assert saga(settings, "stock", "seed", "WIDGET=100", "GADGET=20").returncode == 0
    listed = json.loads(saga(settings, "stock", "--json").stdout)
    assert {r["sku"]: r["on_hand"] for r in listed} == {"WIDGET": 7, "GADGET": 20}
    bad_seed = saga(settings, "stock", "seed", "WIDGET")
    assert bad_seed.returncode == 2 and "expected SKU=QUANTITY" in bad_seed.stderr


@pytest.mark.any_broker
@pytest.mark.processes
def test_submit_wait_status_and_list(system: System, tmp_path: Path) -> None:
    settings = system.settings
    done = saga(
        settings,
        "submit",
        write(tmp_path, make_order("C-1")),
        "--wait",
        "--json",
        "--timeout",
        "60",
    )
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["state"] == "completed"
    # which saga, on which version of its definition, for which client key
    assert (view["saga"], view["version"], view["key"]) == ("order", ORDER_VERSION, "C-1")
    assert [s["name"] for s in view["steps"]] == [
        "reserve_inventory",
        "charge_payment",
        "create_shipment",
        "send_confirmation",
    ]
    assert set(view["steps"][0]) == {"name", "state", "output", "error", "held_by"}

    status = json.loads(saga(settings, "status", view["id"], "--json").stdout)
    assert {k: status[k] for k in ("id", "state", "steps")} == {
        k: view[k] for k in ("id", "state", "steps")
    }
    table = saga(settings, "status", view["id"]).stdout
    assert "charge_payment" in table and "completed" in table
    assert table.splitlines()[0] == f"saga {view['id']}: completed  (order C-1)"

    piped = saga(settings, "submit", "-", stdin=json.dumps(make_order("C-2")))
    assert piped.returncode == 0 and len(piped.stdout.strip()) == 32
    again = saga(settings, "submit", "-", stdin=json.dumps(make_order("C-2")))
    assert again.stdout == piped.stdout  # the same order_id: the same saga

    completed = json.loads(saga(settings, "list", "--state", "completed", "--json").stdout)
    assert view["id"] in [s["id"] for s in completed]
    bad_state = saga(settings, "list", "--state", "done")
    assert bad_state.returncode == 2 and "unknown state 'done'" in bad_state.stderr


@pytest.mark.any_broker
@pytest.mark.processes
def test_an_operator_retries_a_saga_once_the_cause_is_fixed(
    make_system: Callable[..., System], tmp_path: Path
) -> None:
    system = make_system()
    settings = system.settings
    # Given a saga that must compensate while the payment service cannot refund
    refusal = {"create_shipment": {"fail_business": True}}
    saga_id = system.submit(
        make_order("O-1"), faults={**refusal, "refund_payment": {"fail_transient": 99}}
    )
    # its refund fails after every retry: the saga fails, a person is alerted
    assert system.wait(saga_id).state is SagaState.FAILED
    alerts = json.loads(saga(settings, "alerts", "--json").stdout)
    assert [(a["saga_id"], a["step"]) for a in alerts] == [(saga_id, "charge_payment")]
    refused = saga(settings, "cancel", saga_id)
    assert refused.returncode == 2
    assert "cancelling the saga is not allowed from state 'failed'" in refused.stderr
    # When the cause is fixed and the operator retries
    system.plan_faults("O-1", refusal)
    retried = saga(settings, "retry", saga_id)
    assert retried.returncode == 0, retried.stderr
    # Then the saga ends compensated, refunded once, and the alert is gone
    assert system.wait(saga_id).state is SagaState.COMPENSATED
    assert service_records(system.data_dir, "O-1")["refunds"] == 1
    assert json.loads(saga(settings, "alerts", "--json").stdout) == []
    again = saga(settings, "retry", saga_id)
    assert again.returncode == 2 and "not allowed from state 'compensated'" in again.stderr
    shown = saga(settings, "show", saga_id).stdout
    for line in ("charge_payment compensation #1 failed", "ALERT", "operator:", "retry the"):
        assert line in shown, shown
    assert shown.splitlines()[0].endswith("compensated  (order O-1)")


@pytest.mark.any_broker
@pytest.mark.processes
def test_an_operator_cancels_a_running_saga_and_resolves_a_failed_one(
    system: System, tmp_path: Path
) -> None:
    settings = system.settings
    # cancel: the charge is in flight; it is compensated with the reservation
    # (slow enough for a `saga cancel` process to start and act while it runs)
    running = system.submit(make_order("O-2"), faults={"charge_payment": {"delay_seconds": 5}})
    system.wait_step_running("charge_payment", running, "charge_payment")
    cancelled = saga(settings, "cancel", running)
    assert cancelled.returncode == 0 and "compensating" in cancelled.stdout, cancelled.stderr
    assert system.wait(running).state is SagaState.COMPENSATED
    records = service_records(system.data_dir, "O-2")
    assert records["charges"] == records["refunds"] and records["shipments"] == 0
    history = json.loads(saga(settings, "show", running, "--json").stdout)["history"]
    assert history[-1]["event"] in ("compensated", "duplicate_ignored")
    assert any(
        e["event"] == "cancel_requested" and e["actor"].startswith("operator:") for e in history
    )

    # resolve: a compensation that never succeeds, settled by hand
    never = {
        "create_shipment": {"fail_business": True},
        "release_inventory": {"fail_transient": 99},
    }
    failed = system.submit(make_order("O-3"), faults=never)
    assert system.wait(failed).state is SagaState.FAILED
    no_note = saga(settings, "resolve", failed)
    assert no_note.returncode == 2 and "--note" in no_note.stderr
    resolved = saga(settings, "resolve", failed, "--note", "stock counted and fixed by hand")
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(saga(settings, "alerts", "--json").stdout) == []
    assert "stock counted and fixed by hand" in saga(settings, "show", failed).stdout
    unknown = saga(settings, "show", "no-such-saga")
    assert unknown.returncode == 2 and "no saga with id" in unknown.stderr


@pytest.mark.any_broker
@pytest.mark.processes
@pytest.mark.timeout(200)
def test_demo_kills_processes_and_still_ends_clean(settings: Settings) -> None:
    # no random refusals: each curated case ends as it is meant to
    demo = ("demo", "--orders", "12", "--rate", "4", "--kill-every", "1", "--business-rate", "0")
    result = saga(settings, *demo)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "SIGKILL" in out and "restarted" in out
    assert "12 of 12 sagas ended" in out and "processes killed and restarted" in out
    assert "/12 ended" in out  # the live status line
    assert "[########################] 12/12 ended" in out
    # each curated case, with what went wrong in its own words
    assert "declined card" in out and "card declined" in out
    assert "unknown SKU 'NO-SUCH-SKU'" in out and "ALERT saga" in out
    assert out.rstrip().endswith("audit: clean")


@pytest.mark.any_broker
def test_token_creates_the_file_that_the_environment_names(
    settings: Settings, tmp_path: Path
) -> None:
    # Given SAGA_API_TOKENS_FILE exported, as the README shows, and no such file yet
    path = tmp_path / "tokens.json"
    env = settings.with_(above={**settings.above, "SAGA_API_TOKENS_FILE": str(path)})
    # When the first token is made
    made = saga(env, "token", "ops", "--scope", "operator")
    # Then the file is created with it, readable by its owner only
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("saga_")
    assert set(json.loads(path.read_text())) == {"ops"}
    assert path.stat().st_mode & 0o777 == 0o600
    # and a server command still refuses a tokens file that is not there
    path.unlink()
    refused = saga(env, "audit")
    assert refused.returncode == 2
    assert "SAGA_API_TOKENS_FILE" in refused.stderr


@pytest.mark.any_broker
def test_dead_letters_are_listed_and_purged(settings: Settings) -> None:
    from saga_core.dead_letters import QUEUE, DeadLetters

    DeadLetters(settings.broker_url, settings.queue(QUEUE)).put("payment", "not JSON", b"{x")
    listed = saga(settings, "dead-letters")
    assert listed.returncode == 0, listed.stderr
    assert "payment" in listed.stdout and "not JSON" in listed.stdout
    assert "1 dead letter(s)" in listed.stdout
    as_json = json.loads(saga(settings, "dead-letters", "--json").stdout)
    assert [(d["queue"], d["reason"], d["head"]) for d in as_json] == [
        ("payment", "not JSON", "{x")
    ]
    purged = saga(settings, "dead-letters", "--purge")
    assert "1 dead letter(s) purged" in purged.stdout
    assert "0 dead letter(s)" in saga(settings, "dead-letters").stdout
