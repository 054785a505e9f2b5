"""The fault-injection middleware: fault plans and random failure rates carried out at the
step wrapper's and the engine's hooks (``saga_core.middleware``)."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Sequence

from saga_core.config import Settings
from saga_core.errors import BusinessError, TransientError
from saga_core.messages import Command, Phase
from saga_core.middleware import Middleware
from saga_faults import switch
from saga_faults.plans import FaultPlans, OperationFaults
from saga_faults.switch import FailureRates

log = logging.getLogger("saga.faults")


def install(settings: Settings, role: str) -> list[Middleware]:
    """The middleware for a process of ``role`` (worker, orchestrator): fault injection
    where ``SAGA_FAULTS=1`` switched it on (said at WARNING), else none."""
    if not switch.is_on(settings):
        return []
    log.warning(
        "fault injection is ON in this %s (SAGA_FAULTS=1): fault plans in %s and random "
        "failures can crash, stall or fail it; a test and demo setting, never for production",
        role,
        settings.path("faults.db"),
    )
    return [Faults(settings)]


class Faults(Middleware):
    def __init__(self, settings: Settings, rng: random.Random | None = None):
        self.settings = settings
        self.plans = FaultPlans(settings.data_dir)
        self.rates = switch.failure_rates(settings)
        # The module's own generator by default: Python reseeds it in every forked child,
        # so each pool child of a prefork worker draws its own failures.
        self.roll = (rng or random).random

    def _plan(self, command: Command) -> OperationFaults:
        return self.plans.for_operation(command.payload.get("reference"), command.operation)

    def _rates(self, operation: str) -> FailureRates:
        return self.rates.get(operation) or self.rates.get("*") or FailureRates()

    def _draw(self, rates: FailureRates) -> str | None:
        """``"transient"``, ``"business"`` or None, with the configured probabilities."""
        roll = self.roll()
        if roll < rates.transient:
            return "transient"
        if roll < rates.transient + rates.business:
            return "business"
        return None

    # --- in a service worker ------------------------------------------------------------

    def before_run(self, command: Command, tries: int) -> None:
        op, plan = command.operation, self._plan(command)
        if tries < plan.fail_transient:
            raise TransientError(f"{op} failed (fault plan, try {tries + 1})")
        if self._draw(self._rates(op)) == "transient":
            raise TransientError(f"{op} failed (random transient failure)")
        if plan.delay_seconds:
            self._mark("running", command)
            time.sleep(plan.delay_seconds)  # the injected slowness itself, not a wait
        if plan.crash_before_effect:
            _crash(f"{op}: crashing before the effect (fault plan)")

    def before_effect(self, command: Command) -> None:
        op = command.operation
        if self._plan(command).fail_business:
            raise BusinessError(f"{op} refused (fault plan)")
        if command.phase is Phase.ACTION and (self._draw(self._rates(op)) == "business"):
            raise BusinessError(f"{op} refused (random failure)")

    def after_effect(self, command: Command, fresh: bool) -> None:
        plan = self._plan(command)
        if fresh and plan.crash_after_effect:
            _crash(f"{command.operation}: crashing after the effect, before the reply (fault plan)")
        if fresh and plan.pause_after_effect:
            self._mark("committed", command)
            time.sleep(plan.pause_after_effect)  # the window itself, for a kill from outside

    def _mark(self, folder: str, command: Command) -> None:
        """Touch ``DATA_DIR/folder/OPERATION.KEY``: how a test or a demo knows the step has
        come that far."""
        marker = self.settings.data_dir / folder / f"{command.operation}.{command.key}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    # --- in the orchestrator ------------------------------------------------------------

    def before_publish(self, commands: Sequence[Command]) -> None:
        self._crash_point("before_dispatch", commands)

    def after_publish(self, commands: Sequence[Command]) -> None:
        self._crash_point("after_dispatch", commands)

    def _crash_point(self, point: str, commands: Sequence[Command]) -> None:
        """Crash where a plan says so, once per saga: a marker file lets the restarted
        process go on."""
        for c in commands:
            if self.plans.crash_point(c.payload.get("reference")) != f"{point}:{c.operation}":
                continue
            marker = self.settings.data_dir / "crashpoints" / f"{c.saga_id}.{point}.{c.operation}"
            if marker.exists():
                continue
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            _crash(f"crashing at {point}:{c.operation} for saga {c.saga_id} (fault plan)")


def _crash(why: str) -> None:
    log.warning("%s", why)
    os.kill(os.getpid(), signal.SIGKILL)
