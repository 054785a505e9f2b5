"""One root error type, split by whether trying again can help.

No error crosses the broker as an object: an outcome carries its message as a string
(``saga_core.messages``), and only JSON is ever accepted.
"""

from __future__ import annotations


class SagaError(Exception):
    """Root of every error this project raises on purpose."""

    retryable = False

    def __init__(self, message: str, *, saga_id: str | None = None, step: str | None = None):
        super().__init__(message)
        self.message = message
        self.saga_id = saga_id
        self.step = step

    def __str__(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in (("saga", self.saga_id), ("step", self.step)) if v)
        return f"{self.message} ({where})" if where else self.message


class BusinessError(SagaError):
    """The request was understood and refused (a rule of the service said no): never
    retried."""


class TransientError(SagaError):
    """A passing failure (timeout, lock, outage): the same request may succeed later."""

    retryable = True


class DatabaseUnavailable(TransientError):
    """The database does not answer: down, restarting, or failing over to a standby."""


class BrokerUnavailable(TransientError):
    """The broker did not take a message: it is down or unreachable."""


class InvalidInput(BusinessError):
    """A saga's input that cannot be accepted; ``field`` names the offending field. A
    saga's definition may name what its input is (``what``: a booking, say)."""

    what = "input"

    def __init__(self, field: str, problem: str):
        super().__init__(f"invalid {self.what}: {field}: {problem}")
        self.field = field
        self.problem = problem


class IdempotencyConflict(BusinessError):
    """A request key seen before, with a different request: the first one stands."""

    def __init__(self, key: str, saga_id: str):
        super().__init__(
            f"Idempotency-Key {key!r} was first used for a different request", saga_id=saga_id
        )


class MalformedCommand(BusinessError):
    """A command whose payload its service cannot read: retrying cannot mend it, so the
    step is refused like any business failure."""


class MalformedMessage(SagaError):
    """A message that breaks the contract of ``saga_core.messages`` (shape, or an unknown
    version): refused on receipt, never acted on."""


class SagaNotFound(SagaError):
    def __init__(self, saga_id: str):
        super().__init__(f"no saga with id {saga_id!r}", saga_id=saga_id)


class TransitionRefused(SagaError):
    """A state change that the saga state machine does not allow from the current state."""


class DefinitionMissing(TransitionRefused):
    """A saga in flight started on a version of its definition this process does not have:
    it is left as it is (another orchestrator, or this one once the version is registered
    again, takes it on), never advanced on a definition it did not start with."""


class ConfigError(SagaError):
    """A setting that cannot be used; the message names the variable."""
