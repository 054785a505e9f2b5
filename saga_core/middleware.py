"""Hooks for cross-cutting concerns (metrics, failures injected by tests), in the shape of
dramatiq's middleware: the step wrapper and the engine call each hook at a fixed point, and a
concern overrides the hooks it needs. The product's own code path has no branch for any
of them; a process gets the middleware it was started with, and none by default.
"""

from __future__ import annotations

from collections.abc import Sequence

from saga_core.messages import Command, Heartbeat, Outcome


class Middleware:
    """Every hook, doing nothing. An exception a hook raises goes where the code at that
    point would raise it: from a step's hooks, a ``TransientError`` is retried and a
    ``BusinessError`` refuses the step, as if the operation had raised it."""

    # --- the step wrapper, in a service worker, around each run of a command ------------

    def before_run(self, command: Command, tries: int) -> None:
        """Before the run: ``tries`` runs of this delivery came before it."""

    def before_effect(self, command: Command) -> None:
        """Inside the service's transaction, just before an action's effect (not called
        where the ledger already answers for the key, nor for a compensation)."""

    def after_effect(self, command: Command, fresh: bool) -> None:
        """The effect is committed (``fresh``: by this run) and the outcome not yet sent."""

    # --- whichever process receives a message ------------------------------------------

    def refused(self, kind: str, reason: str) -> None:
        """A message of ``kind`` was refused unread for ``reason`` (``saga_core.signing``'s
        reasons): logged, removed from its queue, never acted on."""

    # --- the engine, in the orchestrator ---------------------------------------------------

    def before_publish(self, commands: Sequence[Command]) -> None:
        """The transitions that decided ``commands`` are committed; nothing is sent yet."""

    def after_publish(self, commands: Sequence[Command]) -> None:
        """``commands`` are sent (on Redis, by the orchestrator's call that also
        acknowledges the messages that led to them; elsewhere, before that)."""

    def after_outcome(self, outcome: Outcome, took: float | None) -> None:
        """``outcome`` changed its saga; ``took`` seconds since the dispatch it answers."""

    def after_heartbeat(self, beat: Heartbeat) -> None:
        """``beat`` (checked, and signed where signing is on) is recorded."""
