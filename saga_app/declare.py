"""How a user declares a saga: its name, its input, and its steps in order.

A declaration is turned into the engine's :class:`~orchestrator.definition.SagaDefinition`
(data the orchestrator runs) by :meth:`Saga.definition`; nothing here runs anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.definition import PayloadBuilder, SagaDefinition, StepDefinition
from saga_core.errors import ConfigError, InvalidInput
from saga_core.retry import RetryPolicy
from workers.service import Service

#: Checks a submitted document; returns what is stored and the client's idempotency key.
Prepare = Callable[[Any], tuple[dict[str, Any], str]]


@dataclass(frozen=True)
class Step:
    """One step of a saga: ``action`` run on ``service``, undone by ``compensation``.

    ``payload(input, outputs)`` builds the step's payload from the saga's stored input and
    the outputs of the steps before it, by step name. A step with no compensation must say
    why: ``best_effort`` (its failure does not fail the saga, and it is never undone: a
    confirmation email) or ``irreversible`` (it cannot be undone, on purpose: put it last,
    or after every step that can fail).
    """

    name: str
    service: Service
    action: str
    payload: PayloadBuilder
    compensation: str | None = None
    best_effort: bool = False
    irreversible: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    compensation_retry: RetryPolicy | None = None
    #: the step's own deadline (seconds) and dispatch budget, where not the system's
    timeout: float | None = None
    max_dispatches: int | None = None

    def definition(self) -> StepDefinition:
        return StepDefinition(
            name=self.name,
            action=self.action,
            queue=self.service.name,
            payload=self.payload,
            compensation=self.compensation,
            retry=self.retry,
            compensation_retry=self.compensation_retry,
            best_effort=self.best_effort,
            timeout=self.timeout,
            max_dispatches=self.max_dispatches,
        )


@dataclass(frozen=True)
class Saga:
    """A saga: its ``name``, how its input is checked, and its ``steps`` in order.

    ``input`` is either a function ``document -> (stored, key)`` that raises
    :class:`~saga_core.errors.InvalidInput` naming the field at fault, or a pydantic model
    class, with ``key`` naming the field that is the client's idempotency key (one saga per
    key, however often it is submitted).
    """

    name: str
    input: Prepare | type[Any]
    steps: Sequence[Step]
    key: str | None = None
    #: ``sample(n, rng)``: the n-th made-up input (a distinct key for each n), for
    #: ``saga chaos`` and ``saga demo``
    sample: Callable[[int, random.Random], Any] | None = None
    #: what tells one request from another under the same ``Idempotency-Key`` header; by
    #: default the SHA-256 of the document's JSON (give your own where the document holds
    #: a secret whose hash could be reversed, as a card number)
    fingerprint: Callable[[Any], str] | None = None

    def definition(self) -> SagaDefinition:
        return SagaDefinition(
            name=self.name,
            steps=tuple(step.definition() for step in self.steps),
            prepare=self.prepare,
        )

    @property
    def schema(self) -> dict[str, Any] | None:
        """The input's JSON schema, where its input is a model (the HTTP API shows it)."""
        model_schema = getattr(self.input, "model_json_schema", None)
        return model_schema() if callable(model_schema) else None

    def samples(self, tool: str) -> Callable[[int, random.Random], Any]:
        """Its ``sample`` function, for ``tool`` (a chaos campaign, the demo); a
        ``ConfigError`` naming the saga where it declares none."""
        if self.sample is None:
            raise ConfigError(
                f"saga {self.name!r} declares no sample inputs (Saga(sample=...)): "
                f"{tool} needs them"
            )
        return self.sample

    def request_fingerprint(self, document: Any) -> str:
        """The fingerprint of a request to start this saga with ``document``."""
        fingerprint = self.fingerprint or document_fingerprint
        return fingerprint(document)

    def prepare(self, document: Any) -> tuple[dict[str, Any], str]:
        validate = getattr(self.input, "model_validate", None)
        if not callable(validate):
            return self.input(document)
        from pydantic import ValidationError

        try:
            model = validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or self.name
            raise _invalid(self.name)(where, str(first["msg"])) from None
        stored: dict[str, Any] = model.model_dump(mode="json")
        return stored, str(stored[self.key or ""])


def document_fingerprint(document: Any) -> str:
    """The SHA-256 of ``document``'s canonical JSON (sorted keys, no spaces, ASCII)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@functools.cache
def _invalid(saga: str) -> type[InvalidInput]:
    """The error a saga's input raises: named after the saga (``invalid trip: …``)."""
    return type(f"Invalid{saga.title()}", (InvalidInput,), {"what": saga})
