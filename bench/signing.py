"""What signing costs each message, alone: a command and an outcome of the order saga as
they cross the broker, signed and checked (``saga_core.signing``), many times over. A
steadier figure than the side-by-side runs, whose machine drifts by more than signing
costs."""

from __future__ import annotations

import json
import time
from typing import Any

from bench.workload import order
from order_app import app as order_app
from saga_core.messages import OUTCOME_KIND, Command, Phase, Status
from saga_core.retry import RetryPolicy
from saga_core.signing import CLIENT, Keyring, new_keys

#: Messages signed and checked for a saga that completes: a command and an outcome per step.
MESSAGES_PER_SAGA = 8


def cost(rounds: int = 20_000) -> dict[str, Any]:
    """Microseconds to sign and to check a command and an outcome, and the CPU that makes
    per completed saga (derived, and labelled so)."""
    keyring = Keyring(new_keys([*order_app.service_names, CLIENT]))
    command = Command(
        "charge_payment",
        "0" * 32,
        "charge_payment",
        Phase.ACTION,
        1,
        {**order("bench", 1), "amount_cents": 1999},
        RetryPolicy(),
    )
    outcome = command.answer(Status.SUCCEEDED, 1, {"charge_id": "ch_" + "0" * 24})
    figures: dict[str, Any] = {}
    for name, kind, wire in (
        ("command", command.kind, command.to_wire()),
        ("outcome", OUTCOME_KIND, outcome.to_wire()),
    ):
        t0 = time.perf_counter()
        for _ in range(rounds):
            signed = keyring.sign(kind, wire, ["payment"])
        t1 = time.perf_counter()
        received = json.loads(json.dumps(signed))  # as it arrives: through JSON
        for _ in range(rounds):
            keyring.check(kind, received)
        t2 = time.perf_counter()
        figures[f"{name}_sign_us"] = round((t1 - t0) / rounds * 1e6, 1)
        figures[f"{name}_check_us"] = round((t2 - t1) / rounds * 1e6, 1)
        figures[f"{name}_bytes"] = len(json.dumps(wire))
    each = sum(v for k, v in figures.items() if k.endswith("_us")) / 2
    # not measured on a saga: the microbenchmark's cost per message times the messages a
    # saga that completes signs and checks
    figures["derived_ms_per_saga"] = round(each * MESSAGES_PER_SAGA / 1000, 3)
    figures["derived"] = (
        "derived_ms_per_saga: signing and checking one message (the mean of the command's "
        f"and the outcome's microseconds above) times {MESSAGES_PER_SAGA} messages per "
        "completed saga; not a measurement of sagas"
    )
    return figures
