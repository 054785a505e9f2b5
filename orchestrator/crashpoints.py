"""Deliberate orchestrator crashes at a chosen place in one saga, for tests and demos.

An order's fault plan may say ``{"orchestrator": {"crash_at": "POINT:OPERATION"}}``:

- ``before_dispatch:OP`` — the transition that sends OP is stored, OP is not yet published
- ``after_dispatch:OP`` — OP is published, the outcome that led to it is not yet acknowledged

With a compensation as OP (``before_dispatch:refund_payment``), the crash comes in the
middle of compensating. The process is SIGKILLed, with no clean-up. Each crash happens
once per saga: a marker file in the data directory keeps the restarted process going.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

POINTS = ("before_dispatch", "after_dispatch")

log = logging.getLogger("saga.orchestrator")


def maybe_crash(
    data_dir: Path, saga_id: str, saga_input: dict[str, Any], point: str, operation: str
) -> None:
    plan = (saga_input.get("faults") or {}).get("orchestrator") or {}
    if plan.get("crash_at") != f"{point}:{operation}":
        return
    marker = Path(data_dir) / "crashpoints" / f"{saga_id}.{point}.{operation}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    log.warning("crashing at %s:%s for saga %s (fault plan)", point, operation, saga_id)
    os.kill(os.getpid(), signal.SIGKILL)
