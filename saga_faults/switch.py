"""The switch that turns fault injection on (``SAGA_FAULTS=1``) and its random failure
rates (``SAGA_FAILURE_RATES``): read with every other setting (``saga_core.config`` keeps
them in ``Settings.above``), interpreted and checked here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from saga_core.config import PREFIX, Settings, flag
from saga_core.errors import ConfigError

SWITCH = PREFIX + "FAULTS"
RATES = PREFIX + "FAILURE_RATES"


@dataclass(frozen=True)
class FailureRates:
    """Probabilities of an injected failure for one operation (or, under ``"*"``, for every
    operation)."""

    transient: float = 0.0
    business: float = 0.0


def is_on(settings: Settings) -> bool:
    """Whether fault injection is switched on; a ``ConfigError`` naming the variable for a
    switch that is neither 1 nor 0, for rates that cannot be read, or rates without the
    switch."""
    on = flag(settings.above, SWITCH[len(PREFIX) :], False)
    rates = failure_rates(settings)  # checked either way: a bad value is named at start
    if not on and rates:
        raise ConfigError(f"{RATES} injects failures, a test and demo tool: it needs {SWITCH}=1")
    return on


def failure_rates(settings: Settings) -> dict[str, FailureRates]:
    """The rates of ``{"*": {"transient": 0.1}, "charge_payment": {"business": 0.05}}``."""
    raw = settings.above.get(RATES, "")
    try:
        data = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{RATES} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f'{RATES} must be a JSON object like {{"*": {{"transient": 0.1}}}}')
    rates: dict[str, FailureRates] = {}
    for step, spec in data.items():
        if not isinstance(spec, dict) or set(spec) - {"transient", "business"}:
            raise ConfigError(
                f"{RATES}[{step!r}] must be an object with 'transient' and/or 'business'"
            )
        values = {}
        for kind, value in spec.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"{RATES}[{step!r}].{kind} must be a probability in [0, 1]")
            values[kind] = float(value)
        rates[step] = FailureRates(**values)
    return rates


def switched(settings: Settings, on: bool, rates: Mapping[str, FailureRates] = {}) -> Settings:
    """``settings`` with fault injection switched ``on`` (or off), with ``rates``."""
    above = {k: v for k, v in settings.above.items() if k not in (SWITCH, RATES)}
    if on:
        above[SWITCH] = "1"
    if rates:
        above[RATES] = json.dumps(
            {name: {"transient": r.transient, "business": r.business} for name, r in rates.items()}
        )
    return settings.with_(above=above)
