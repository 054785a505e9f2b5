"""The app: which sagas and which services a system runs, checked when it loads.

Every process of a system loads the same app (``SAGA_APP=package.module:app``, or
``saga --app``, as ``celery -A`` names a Celery app): the orchestrator runs its sagas, a
worker its service, the tools read what both name.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.definition import SagaDefinition, by_stored_name, step_services
from saga_app.declare import Saga
from saga_app.invariants import Invariant
from saga_core.config import Settings
from saga_core.database import Connection
from saga_core.errors import ConfigError
from saga_store.models import VERSION_MARK
from workers.service import Service

#: The app every process loads where ``SAGA_APP`` names none: the order saga.
BUILT_IN = "order_app:app"


class AppError(ConfigError):
    """An app that cannot run: the message names the saga and the step at fault."""


@dataclass(frozen=True)
class App:
    """``sagas`` and the ``services`` their steps run on; checked on construction
    (:class:`AppError` naming the saga and the step).

    ``retired`` holds earlier declarations of these sagas whose steps changed (another
    version: ``SagaDefinition.version``): new sagas start on the current one, and a saga
    in flight ends on the version it started with. Keep one there until its sagas end.
    """

    sagas: Sequence[Saga]
    services: Sequence[Service]
    retired: Sequence[Saga] = ()
    #: what ``saga audit`` checks beyond what holds for every saga (``saga_app.invariants``)
    invariants: Sequence[Invariant] = ()
    #: puts in place what the sagas' samples need (stock to reserve, say), given a function
    #: that opens a service's database by name: ``saga chaos`` and ``saga demo`` call it
    setup: Callable[[Callable[[str], Connection]], None] | None = None
    definitions: Mapping[str, SagaDefinition] = field(init=False)
    retired_definitions: tuple[SagaDefinition, ...] = field(init=False)
    _stored: Mapping[str, SagaDefinition] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check(self.sagas, self.services, self.retired)
        definitions = {saga.name: saga.definition() for saga in self.sagas}
        object.__setattr__(self, "definitions", definitions)
        retired = tuple(saga.definition() for saga in self.retired)
        object.__setattr__(self, "retired_definitions", retired)
        object.__setattr__(self, "_stored", by_stored_name(definitions, retired))

    def definition_of(self, stored: str) -> SagaDefinition | None:
        """The definition a saga stored as ``stored`` (``name@version``) runs on, if the app
        has that version (a saga stored before versions: its saga's current one)."""
        return self._stored.get(stored)

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(service.name for service in self.services)

    @property
    def operations(self) -> list[str]:
        """Every action and compensation its services register (each a task name)."""
        return [op for service in self.services for op in service.operations]

    def saga(self, name: str | None = None) -> Saga:
        """The saga named ``name``; the first where None."""
        if name is None:
            return self.sagas[0]
        for saga in self.sagas:
            if saga.name == name:
                return saga
        known = ", ".join(s.name for s in self.sagas)
        raise AppError(f"no saga named {name!r} in this app (it has {known})")

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        known = ", ".join(self.service_names)
        raise AppError(f"no service named {name!r} in this app (it has {known})")


def check(sagas: Sequence[Saga], services: Sequence[Service], retired: Sequence[Saga] = ()) -> None:
    """Refuse, with an error naming the saga and the step, what could not run: a step
    whose action or compensation its service does not register, a step name used twice
    (or for two services), a step that can be neither undone nor skipped without saying
    so, and names used twice."""
    if not sagas:
        raise AppError("an app needs at least one saga")
    _unique("saga", [s.name for s in sagas])
    for saga in [*sagas, *retired]:
        if VERSION_MARK in saga.name:
            raise AppError(f"saga name {saga.name!r}: {VERSION_MARK!r} is kept for versions")
    _unique("service", [s.name for s in services])
    by_name = {s.name: s for s in services}
    owner: dict[str, str] = {}  # an operation name is a task name: one service each
    for service in services:
        for operation in service.operations:
            if owner.setdefault(operation, service.name) != service.name:
                raise AppError(
                    f"operation {operation!r} is registered on services {owner[operation]!r} "
                    f"and {service.name!r}: name them apart"
                )
    for saga in [*sagas, *retired]:
        if not saga.steps:
            raise AppError(f"saga {saga.name!r} has no step")
        fields = getattr(saga.input, "model_fields", None)
        if fields is not None and saga.key not in fields:
            raise AppError(
                f"saga {saga.name!r}: key {saga.key!r} is not a field of its input model "
                f"(one of {', '.join(fields)})"
            )
        seen: set[str] = set()
        for step in saga.steps:
            where = f"saga {saga.name!r}, step {step.name!r}"
            if step.name in seen:
                raise AppError(f"{where}: the step name is used twice")
            seen.add(step.name)
            on = by_name.get(step.service.name)
            if on is None or on is not step.service:
                raise AppError(f"{where}: its service {step.service.name!r} is not in the app")
            action = on.operations.get(step.action)
            if action is None or action.is_compensation:
                raise AppError(
                    f"{where}: action {step.action!r} is not registered on service "
                    f"{on.name!r} (@{on.name}.action({step.action!r}))"
                )
            if step.compensation is not None:
                undo = on.operations.get(step.compensation)
                if undo is None or undo.undoes != step.action:
                    raise AppError(
                        f"{where}: compensation {step.compensation!r} is not registered on "
                        f"service {on.name!r} as undoing {step.action!r} "
                        f"(@{on.name}.compensation({step.compensation!r}, "
                        f"undoes={step.action!r}))"
                    )
                if step.best_effort or step.irreversible:
                    raise AppError(
                        f"{where}: a step with a compensation is neither best-effort nor "
                        "irreversible"
                    )
            elif not (step.best_effort or step.irreversible):
                raise AppError(
                    f"{where}: no compensation; say why: best_effort=True (its failure "
                    "does not fail the saga) or irreversible=True (it cannot be undone, on "
                    "purpose)"
                )
    try:  # a step name means one service in every saga: an outcome must tell whose it is
        step_services(saga.definition() for saga in [*sagas, *retired])
    except ValueError as exc:
        raise AppError(str(exc)) from None


def _unique(what: str, names: list[str]) -> None:
    for name in names:
        if not name or names.count(name) > 1:
            raise AppError(f"{what} name {name!r} is empty or used twice")


def of(settings: Settings) -> App:
    """The app the settings name (``SAGA_APP``), or the built-in one."""
    return load(settings.app or BUILT_IN)


def configured(settings: Settings) -> Settings:
    """``settings`` with the names of its app's services: their queues and identities."""
    return settings.with_(services=of(settings).service_names)


def load(spec: str) -> App:
    """The app that ``spec`` (``package.module:attribute``; the attribute ``app`` by
    default) names; :class:`AppError` saying what is wrong."""
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise AppError(f"SAGA_APP={spec!r}: name a module, as package.module:app")
    if os.getcwd() not in sys.path:  # a module beside the command, as `celery -A` finds one
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"SAGA_APP={spec!r}: cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, App):
        raise AppError(
            f"SAGA_APP={spec!r}: {module_name}.{attribute or 'app'} is not a saga_app.App"
        )
    return app
