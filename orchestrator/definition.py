"""A saga definition is data: an ordered list of steps, each with its action task,
its compensation task (or none), its retry policy and whether it is best-effort."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from saga_core.retry import RetryPolicy
from saga_store.models import VERSION_MARK, StepSpec

# Builds a step's payload from the saga's stored input and the outputs of earlier steps.
PayloadBuilder = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class StepDefinition:
    name: str
    action: str  # Celery task name
    queue: str  # the service queue, without any prefix
    payload: PayloadBuilder
    compensation: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    compensation_retry: RetryPolicy | None = None
    best_effort: bool = False
    # Overrides of the orchestrator-wide deadline and dispatch budget, where set.
    timeout: float | None = None
    max_dispatches: int | None = None

    def retry_for_compensation(self) -> RetryPolicy:
        return self.compensation_retry or self.retry


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    steps: tuple[StepDefinition, ...]
    # Validates a submitted document; returns (what to store, the client's idempotency key).
    prepare: Callable[[Any], tuple[dict[str, Any], str]]

    @cached_property
    def version(self) -> str:
        """A digest of the steps' shape: their names, services, tasks and kinds, in order.
        A saga records the version it started with, and runs to its end on that one
        (``Engine``); a payload builder's code is not in it, so changing how a payload is
        built keeps the version (and must keep the payload's meaning for sagas in flight)."""
        shape = [(s.name, s.queue, s.action, s.compensation, s.best_effort) for s in self.steps]
        return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:12]

    @property
    def stored_as(self) -> str:
        """What the store records as a saga's definition: ``name@version``."""
        return f"{self.name}{VERSION_MARK}{self.version}"

    def step(self, name: str) -> StepDefinition:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"saga {self.name!r} has no step {name!r}")

    def specs(self, default_timeout: float, default_max_dispatches: int) -> list[StepSpec]:
        """What the store keeps of each step; a step's own setting wins over the default."""
        return [
            StepSpec(
                name=s.name,
                compensable=s.compensation is not None,
                best_effort=s.best_effort,
                timeout=s.timeout if s.timeout is not None else default_timeout,
                max_dispatches=(
                    s.max_dispatches if s.max_dispatches is not None else default_max_dispatches
                ),
            )
            for s in self.steps
        ]


def step_services(definitions: Iterable[SagaDefinition]) -> dict[str, str]:
    """Which service runs each step, by the step's name: the one whose key must sign the
    step's outcomes (``saga_core.signing``). A name must mean one service in every
    definition, or an outcome could not tell whose it is."""
    services: dict[str, str] = {}
    for definition in definitions:
        for step in definition.steps:
            if services.setdefault(step.name, step.queue) != step.queue:
                raise ValueError(
                    f"step {step.name!r} runs on {services[step.name]!r} in one definition "
                    f"and on {step.queue!r} in {definition.name!r}: name them apart"
                )
    return services


def by_stored_name(
    current: Mapping[str, SagaDefinition], retired: Iterable[SagaDefinition] = ()
) -> dict[str, SagaDefinition]:
    """Each definition by what the store records of a saga that runs on it (``name@version``);
    a current one by its name alone too, for a saga stored before definitions had versions."""
    found = {d.stored_as: d for d in (*retired, *current.values())}
    found.update(current)
    return found
