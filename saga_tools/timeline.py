"""A saga's history as a person reads it: ``saga show``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from saga_store import Connection, queries
from saga_store.models import Alert, Event, HistoryEvent, SagaView

Story = tuple[SagaView, list[HistoryEvent], list[Alert]]


def load(conn: Connection, saga_id: str) -> Story:
    """The saga, its history and all its alerts: what ``saga show`` and the web view tell.
    Raises ``SagaNotFound`` for an unknown saga."""
    return (
        queries.get_saga(conn, saga_id),
        queries.history(conn, saga_id),
        queries.alerts(conn, include_resolved=True, saga_id=saga_id),
    )


_SAGA_WORDS = {
    Event.CREATED: "saga created",
    Event.STARTED: "saga started",
    Event.COMPENSATING: "saga compensating",
    Event.COMPLETED: "saga completed",
    Event.COMPENSATED: "saga compensated",
    Event.FAILED: "saga failed: a compensation gave up",
    Event.RETRY: "operator: retry the failed compensations",
    Event.RESOLVED: "operator: resolved by hand",
    Event.CANCELLED: "operator: cancel",
}


def describe(e: HistoryEvent) -> str:
    """One event in words."""
    if e.step is None or e.event in _SAGA_WORDS:
        text = _SAGA_WORDS.get(e.event, e.event.value)
        if e.step:
            text += f" ({e.step})"
    else:
        what = f"{e.step} {e.phase.value if e.phase else ''} #{e.attempt or '?'}"
        took = f" in {e.duration_ms:,.0f} ms" if e.duration_ms is not None else ""
        tries = f", {e.tries} tries" if e.tries and e.tries > 1 else ""
        text = {
            Event.DISPATCHED: f"{what} sent",
            Event.REDISPATCHED: f"{what} sent again: lost",
            Event.RESENT: f"{what} sent again: the orchestrator (re)started",
            Event.SUCCEEDED: f"{what} succeeded{took}{tries}",
            Event.REJECTED: f"{what} refused{took}{tries}",
            Event.EXHAUSTED: f"{what} failed{took}{tries}",
            Event.DUPLICATE: f"{what} duplicate outcome ignored",
            Event.GIVEN_UP: f"{what} given up",
            Event.ALERT: f"ALERT: compensation of {e.step} gave up",
        }.get(e.event, f"{what} {e.event.value}")
    if e.error:
        text += f": {e.error}"
    if e.note and e.event is Event.REDISPATCHED:
        text += f" ({e.note})"
    elif e.note:
        text += f" — {e.note!r}"
    return text


def headline(view: SagaView) -> str:
    """``saga ID: STATE  (SAGA KEY)``: the saga's name and its client's key."""
    return f"saga {view.id}: {view.state}  ({view.definition} {view.key})"


def render(view: SagaView, events: list[HistoryEvent], alerts: list[Alert]) -> str:
    """The saga, its steps, and its timeline with times relative to its creation."""
    lines = [headline(view)]
    if view.error:
        lines.append(f"  reason: {view.error}")
    lines.append("")
    lines.append("  steps")
    for s in view.steps:
        sent = f"{s.attempts} sent" + (
            f", compensation {s.compensation_attempts} sent" if s.compensation_attempts else ""
        )
        lines.append(f"    {s.name:<20} {s.state:<12} {sent}")
    open_alerts = [a for a in alerts if a.resolved_at is None]
    if open_alerts:
        lines.append("")
        lines.append("  open alerts")
        lines.extend(f"    {a.created_at}  {a.step}: {a.error}" for a in open_alerts)
    lines.append("")
    lines.append(f"  {'at (UTC)':<12} {'+ms':>8}  {'who':<14} what")
    start = datetime.fromisoformat(events[0].at) if events else None
    for e in events:
        at = datetime.fromisoformat(e.at)
        offset = (at - start).total_seconds() * 1000 if start else 0.0
        clock = f"{at:%H:%M:%S}.{at.microsecond // 1000:03d}"
        lines.append(f"  {clock:<12} {offset:>8,.0f}  {e.actor:<14} {describe(e)}")
    return "\n".join(lines)


def to_dict(view: SagaView, events: list[HistoryEvent], alerts: list[Alert]) -> dict[str, Any]:
    return {
        **view.to_dict(),
        "history": [e.to_dict() for e in events],
        "alerts": [
            {
                "step": a.step,
                "error": a.error,
                "created_at": a.created_at,
                "resolved_at": a.resolved_at,
            }
            for a in alerts
        ],
    }
