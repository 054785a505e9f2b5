"""The state machine is one table: every state change the transitions make is a move it
holds, a move it does not hold is refused, and the docs show the table as it is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from saga_core.errors import TransitionRefused
from saga_store import SagaState, StepState, queries
from saga_store.machine import SAGA_MOVES, STEP_MOVES, StepEvent, saga_move, step_move, table
from tests.harness import Harness
from tests.helpers import make_order

ROOT = Path(__file__).resolve().parents[2]
States = dict[str, tuple[SagaState, dict[str, StepState]]]


def states(h: Harness) -> States:
    db = h.engine.db
    return {
        sid: (view.state, {s.name: s.state for s in view.steps})
        for sid in [r["id"] for r in queries.list_sagas(db, limit=1000)]
        for view in [queries.get_saga(db, sid)]
    }


def changes(before: States, after: States) -> tuple[set, set]:
    sagas, steps = set(), set()
    for sid, (state, step_states) in after.items():
        # a saga created meanwhile was stored pending, with every step pending
        created = (SagaState.PENDING, dict.fromkeys(step_states, StepState.PENDING))
        old_state, old_steps = before.get(sid, created)
        if old_state != state:
            sagas.add((old_state, state))
        for name, s in step_states.items():
            if name in old_steps and old_steps[name] != s:
                steps.add((old_steps[name], s))
    return sagas, steps


def test_every_change_the_transitions_make_is_a_move_of_the_table(h: Harness) -> None:
    allowed_sagas = {(a, b) for (a, _), b in SAGA_MOVES.items()}
    allowed_steps = {(a, b) for (a, _), b in STEP_MOVES.items()}
    seen_sagas: set = set()
    seen_steps: set = set()

    def act(action: Callable[[], object]) -> object:
        before = states(h)
        result = action()
        sagas, steps = changes(before, states(h))
        seen_sagas.update(sagas)
        seen_steps.update(steps)
        return result

    def submit(order_id: str, faults: dict | None = None, **changes: object) -> str:
        return str(act(lambda: h.submit(make_order(order_id, **changes), faults=faults)))

    refund_fails = {
        "create_shipment": {"fail_business": True},
        "refund_payment": {"fail_transient": 9},
    }
    # an operator cancels a saga whose charge is in flight
    late = submit("LATE")
    act(lambda: h.engine.handle_outcome(h.execute_next()))
    act(lambda: h.engine.cancel(late, "operator:test"))
    sids = [
        late,
        submit("OK"),
        submit("NO", card_number="4000000000000002"),
        submit("BAD", refund_fails),
        submit("MUTE", {"send_confirmation": {"fail_transient": 9}}),
    ]
    while h.commands:
        act(lambda: h.engine.handle_outcome(h.execute_next()))
    h.plans.add("BAD", {})
    act(lambda: h.engine.retry(sids[3], "operator:test"))
    while h.commands:
        act(lambda: h.engine.handle_outcome(h.execute_next()))
    # a command lost: given up by the sweeper after its dispatch budget
    given_up = submit("LOST")
    for _ in range(h.settings.max_dispatches + 1):
        h.commands.clear()
        h.clock.now += h.settings.step_timeout + 1
        act(h.engine.sweep)
    while h.commands:
        act(lambda: h.engine.handle_outcome(h.execute_next()))

    assert seen_sagas <= allowed_sagas, seen_sagas - allowed_sagas
    assert seen_steps <= allowed_steps, seen_steps - allowed_steps
    assert {h.saga(s).state for s in [*sids, given_up]} == {
        SagaState.COMPLETED,
        SagaState.COMPENSATED,
    }
    # the scenarios above take every change of state the saga table holds but a pending
    # saga's cancel (a saga is pending only between its creation and its start)
    changing = {(a, b) for a, b in allowed_sagas if a != b}
    assert changing - seen_sagas == {(SagaState.PENDING, SagaState.COMPENSATED)}


def test_a_move_the_table_does_not_hold_is_refused() -> None:
    with pytest.raises(TransitionRefused, match="succeed is not allowed from step state"):
        step_move(StepState.COMPLETED, StepEvent.SUCCEED)
    with pytest.raises(TransitionRefused, match="retrying is not allowed from state 'running'"):
        saga_move(
            SagaState.RUNNING,
            next(e for (s, e) in SAGA_MOVES if s is SagaState.FAILED),
            "retrying",
            "s-1",
        )


def test_the_docs_show_the_table_as_the_code_has_it() -> None:
    assert table() in (ROOT / "docs" / "state-machine.md").read_text()


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)
