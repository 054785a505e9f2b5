"""Injected failures: random ones set by configuration, and a fault plan carried by an order.

An order's ``faults`` object maps an operation (a task name such as ``charge_payment`` or
``refund_payment``) to what should go wrong there:

- ``fail_transient``: N — fail with a transient error on the first N tries of each delivery
- ``fail_business``: true — fail for a business reason (recorded, so every repeat agrees)
- ``crash_after_effect``: true — kill the worker process after the effect is committed and
  before the outcome is sent (once: the redelivered run finds the effect and replies)
- ``crash_before_effect``: true — kill the worker process before the effect, on every
  delivery: a poison message, given up after ``SAGA_MAX_DELIVERIES`` runs that never ended
- ``delay_seconds``: S — a slow step: wait S seconds before the effect, after touching
  ``DATA_DIR/running/OPERATION.KEY`` so that a test or a demo knows the step is under way
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from saga_core.config import FailureRates

FAULT_FIELDS = {
    "fail_transient": int,
    "fail_business": bool,
    "crash_after_effect": bool,
    "crash_before_effect": bool,
    "delay_seconds": float,
}


@dataclass(frozen=True)
class FaultPlan:
    fail_transient: int = 0
    fail_business: bool = False
    crash_after_effect: bool = False
    crash_before_effect: bool = False
    delay_seconds: float = 0.0

    @classmethod
    def for_operation(cls, faults: dict[str, Any] | None, operation: str) -> FaultPlan:
        spec = (faults or {}).get(operation) or {}
        return cls(**{k: v for k, v in spec.items() if k in FAULT_FIELDS})


def draw(rates: FailureRates, rng: random.Random | None = None) -> str | None:
    """``"transient"``, ``"business"`` or None, with the configured probabilities."""
    roll = (rng or random).random()
    if roll < rates.transient:
        return "transient"
    if roll < rates.transient + rates.business:
        return "business"
    return None
