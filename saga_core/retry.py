"""Retry policy and backoff: pure functions, testable without a broker."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

#: The most retries, and the longest backoff in seconds, a policy may ask for: a message
#: cannot make a worker hold a step for longer than this between tries.
MAX_BOUND = 3600


@dataclass(frozen=True)
class RetryPolicy:
    """How often a transient failure is retried, and how long to wait before each retry."""

    max_retries: int = 3
    backoff_base: float = 0.2  # seconds before the first retry
    backoff_max: float = 5.0
    jitter: bool = True

    def delay(self, retries_so_far: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retries_so_far + 1``.

        Exponential, capped at ``backoff_max``; with jitter, a uniform draw from
        [delay / 2, delay] ("equal jitter") so that a crowd of failures does not retry in step.
        """
        delay = min(self.backoff_max, self.backoff_base * (2**retries_so_far))
        if self.jitter:
            delay = (rng or random).uniform(delay / 2, delay)
        return delay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, data: Any) -> RetryPolicy:
        """The policy in ``data`` (the default where None); raises ``ValueError`` or
        ``TypeError`` naming what cannot be used."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise TypeError("must be an object")
        policy = cls(**data)  # an unknown field is a TypeError that names it
        numbers = (policy.max_retries, policy.backoff_base, policy.backoff_max)
        if any(
            isinstance(n, bool) or not isinstance(n, int | float) or not 0 <= n <= MAX_BOUND
            for n in numbers
        ):
            raise ValueError(
                f"max_retries, backoff_base and backoff_max must be numbers from 0 to {MAX_BOUND}"
            )
        if type(policy.max_retries) is not int or not isinstance(policy.jitter, bool):
            raise ValueError("max_retries must be a whole number and jitter true or false")
        return policy
