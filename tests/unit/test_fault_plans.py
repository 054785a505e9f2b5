"""Fault plans: checked when written, read by the processes of a system started with
SAGA_FAULTS=1, and set from the command line only under that switch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from saga_faults.plans import FaultPlans, OperationFaults
from saga_tools.cli import main

OPERATIONS = {"charge_payment", "refund_payment"}


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        ([], "faults: must be an object"),
        ({"mine_bitcoin": {}}, "faults.mine_bitcoin: unknown operation"),
        ({"charge_payment": {"explode": True}}, "faults.charge_payment.explode: unknown fault"),
        ({"charge_payment": {"fail_transient": 1.5}}, "fail_transient: must be a whole number"),
        ({"charge_payment": {"delay_seconds": 61}}, "delay_seconds: must be a number of seconds"),
        ({"charge_payment": {"fail_business": 1}}, "fail_business: must be true or false"),
        ({"orchestrator": {"crash_at": "mid_air:charge_payment"}}, "faults.orchestrator.crash_at"),
        ({"orchestrator": {"crash_at": "before_dispatch:nothing"}}, "faults.orchestrator.crash_at"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_field(tmp_path: Path, plan: Any, field: str) -> None:
    plans = FaultPlans(tmp_path, OPERATIONS)
    with pytest.raises(ValueError, match=field):
        plans.add("O-1", plan)
    assert plans.get("O-1") == {}


def test_a_plan_is_read_by_order_and_operation(tmp_path: Path) -> None:
    plan = {
        "charge_payment": {"fail_transient": 2, "delay_seconds": 0.5},
        "orchestrator": {"crash_at": "after_dispatch:refund_payment"},
    }
    FaultPlans(tmp_path, OPERATIONS).add("O-1", plan)
    reader = FaultPlans(tmp_path)  # another process's view of the same file
    assert reader.for_operation("O-1", "charge_payment") == OperationFaults(
        fail_transient=2, delay_seconds=0.5
    )
    assert reader.for_operation("O-1", "refund_payment") == OperationFaults()
    assert reader.for_operation("O-2", "charge_payment") == OperationFaults()
    assert reader.crash_point("O-1") == "after_dispatch:refund_payment"


def test_the_command_line_sets_a_plan_only_under_the_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAGA_DATA_DIR", str(tmp_path))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"charge_payment": {"delay_seconds": 5}}))
    assert main(["faults", "K-1", str(plan)]) == 2
    assert "need SAGA_FAULTS=1" in capsys.readouterr().err
    assert not (tmp_path / "faults.db").exists()

    monkeypatch.setenv("SAGA_FAULTS", "1")
    assert main(["faults", "K-1", str(plan)]) == 0
    assert json.loads(capsys.readouterr().out) == {"charge_payment": {"delay_seconds": 5}}
    plan.write_text(json.dumps({"charge_payment": {"crash": True}}))
    assert main(["faults", "K-1", str(plan)]) == 2
    assert "faults.charge_payment.crash: unknown fault" in capsys.readouterr().err
