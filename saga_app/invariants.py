"""What must hold across the stores once sagas end: the checks ``saga audit`` runs.

The audit checks what holds for every saga from the saga store and the services' ledgers
alone (``saga_tools.audit``). A saga's author adds what only they know — stock that must
add up, money that must balance, one booking per trip at an outside provider — as
invariants declared on the app (``App(invariants=[...])``): each a function that reads the
stores through :class:`Stores` and yields a :class:`Violation` for each thing wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from saga_core import database
from saga_core.database import Location, Row
from saga_store.models import stored_name


@dataclass(frozen=True)
class Violation:
    """One thing wrong: the check that found it, the saga (where there is one), what."""

    check: str
    saga_id: str | None
    message: str


@dataclass(frozen=True)
class Ended:
    """A saga as the audit sees it: its id, its saga's name, its state and its input."""

    id: str
    saga: str
    state: str
    input: Any
    created_at: str


class Stores:
    """Read-only access to a system's stores: its sagas and each service's database."""

    def __init__(self, rows: Iterable[Row], database_of: Callable[[str], Location]):
        self._rows = list(rows)
        self._database_of = database_of

    @cached_property
    def sagas(self) -> list[Ended]:
        """Every saga in the store, whatever its state."""
        return [
            Ended(
                r["id"],
                stored_name(r["definition"])[0],
                r["state"],
                json.loads(r["input"]),
                r["created_at"],
            )
            for r in self._rows
        ]

    def of(self, saga: str) -> list[Ended]:
        """The sagas named ``saga``."""
        return [s for s in self.sagas if s.saga == saga]

    def rows(self, service: str, sql: str, parameters: tuple[Any, ...] = ()) -> list[Row]:
        """Rows of ``sql`` in ``service``'s database; none where that database or table is
        not there yet (a service that never ran holds nothing)."""
        where = self._database_of(service)
        if where.absent:
            return []
        conn = database.connect(where, readonly=True)
        try:
            return list(conn.execute(sql, parameters).fetchall())
        except Exception as exc:
            if database.missing_table(exc):
                return []
            raise
        finally:
            conn.close()


#: An author's invariant: reads the stores, yields what is wrong.
Invariant = Callable[[Stores], Iterable[Violation]]
