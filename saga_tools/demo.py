"""The demo: start the app's workers and the orchestrator, submit a batch of one of its
sagas with random failures (and, with ``--kill-every``, kill processes as they run), show
the sagas' states live, then a table of outcomes and the audit's verdict.

The order saga's batch is a curated one: ordinary orders and one of each thing that goes
wrong (a declined card, an unknown SKU, too little stock, an email and a refund that keep
failing), on a stock set for it. Any other saga's batch is its samples (``Saga.sample``),
one of them with a compensation that keeps failing.
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any, TextIO

import saga_app
from order_app import ORDER, inventory
from saga_app import Saga
from saga_app.app import of as app_of
from saga_core import broker
from saga_core.config import Settings
from saga_core.signing import new_keys
from saga_faults import switch
from saga_faults.killer import Killer
from saga_faults.switch import FailureRates
from saga_store import open_reader, queries
from saga_tools import audit, redis_server
from saga_tools.chaos import failing_compensation
from saga_tools.cluster import Cluster

STOCK = {"WIDGET": 500, "GADGET": 200, "GIZMO": 2}
GOOD_CARDS = ["4242424242424242", "5555555555554444"]


def _order(n: int, rng: random.Random) -> dict[str, Any]:
    sku = rng.choice(["WIDGET", "GADGET"])
    quantity = rng.randint(1, 3)
    return {
        "order_id": f"demo-{n:04d}",
        "customer_email": f"customer{n}@example.com",
        "items": [{"sku": sku, "quantity": quantity}],
        "amount_cents": quantity * 1999,
        "currency": "EUR",
        "card_number": rng.choice(GOOD_CARDS),
        "shipping_address": {
            "name": f"Customer {n}",
            "line1": f"{n} Main Street",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
        },
    }


Faults = dict[str, Any] | None
#: A saga of the batch: its label, its input and its fault plan, if any.
Item = tuple[str, Any, Faults]


def make_batch(saga: Saga, count: int, seed: int = 7) -> list[Item]:
    """The batch the demo submits of ``saga``: the order saga's curated one, or samples."""
    if saga is ORDER:
        return make_orders(count, seed)
    sample = saga.samples("the demo")
    rng = random.Random(seed)
    batch: list[Item] = [("sample", sample(n, rng), None) for n in range(1, count + 1)]
    plan = failing_compensation(saga, rng)
    if plan and batch:
        index = min(2, len(batch) - 1)
        batch[index] = ("compensation keeps failing", batch[index][1], plan)
    return batch


def make_orders(count: int, seed: int = 7) -> list[tuple[str, dict[str, Any], Faults]]:
    """A batch of orders (each with its label and its fault plan, if any): mostly ordinary
    ones, and one of each deterministic fault."""
    rng = random.Random(seed)
    batch: list[tuple[str, dict[str, Any], Faults]] = [
        ("ordinary", _order(n, rng), None) for n in range(1, count + 1)
    ]
    special: list[tuple[str, dict[str, Any], Faults]] = [
        ("declined card", {"card_number": "4000000000000002"}, None),
        ("unknown SKU", {"items": [{"sku": "NO-SUCH-SKU", "quantity": 1}]}, None),
        ("more than the stock", {"items": [{"sku": "GIZMO", "quantity": 5}]}, None),
        ("email keeps failing", {}, {"send_confirmation": {"fail_transient": 100}}),
        (
            "refund keeps failing",
            {},
            {"create_shipment": {"fail_business": True}, "refund_payment": {"fail_transient": 100}},
        ),
    ]
    for i, (label, change, faults) in enumerate(special[: max(0, count)]):
        index = (i * 5 + 2) % len(batch)
        batch[index] = (label, {**batch[index][1], **change}, faults)
    return batch


def run(
    settings: Settings,
    orders: int = 24,
    transient: float = 0.1,
    business: float = 0.03,
    timeout: float = 180.0,
    rate: float = 8.0,
    kill_every: float | None = None,
    seed: int = 7,
    saga: str | None = None,
) -> int:
    """The demo of ``saga`` (the app's first where None); its exit status."""
    chosen = app_of(settings).saga(saga)
    batch = make_batch(chosen, orders, seed)
    # The demo prints its own report; the submitting side's per-saga log lines would bury it.
    logging.getLogger("saga.orchestrator").setLevel(logging.WARNING)
    data_dir = settings.data_dir / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    url, owned = redis_server.ensure(settings.broker_url, settings.data_dir)
    owned_keys = None if settings.keys else new_keys(settings.identities)
    print(f"broker: {url}" + (" (started for this demo)" if owned else ""))
    settings = settings.with_(
        broker_url=url,
        data_dir=data_dir,
        # Queues of this run only (see saga_tools.chaos): a killed worker's message that
        # comes back later must not reach the next demo's workers.
        queue_prefix=f"{settings.queue_prefix}demo.{uuid.uuid4().hex[:8]}.",
        # Signed messages, with keys made for this run where none are configured.
        keys=owned_keys or settings.keys,
        # Kills are the point of --kill-every: recover from them in seconds, not 30.
        step_timeout=5.0 if kill_every else settings.step_timeout,
    )
    # The demo shows failures on purpose: fault injection on, in its own processes.
    rates = FailureRates(transient=transient, business=business)
    settings = switch.switched(settings, True, {"*": rates})
    cluster = Cluster(settings).prepare(STOCK if chosen is ORDER else None)
    try:
        cluster.start().wait_ready()
        logs = data_dir / "logs"
        print(f"started {len(cluster.workers)} workers and the orchestrator; logs in {logs}")
        print(f"random failures per step: transient {transient:.0%}, business {business:.0%}")
        where = "SAGA_KEYS_FILE's keys" if owned_keys is None else "keys made for this demo"
        print(f"commands and outcomes signed: each worker holds its own service's key ({where})")
        killer = None
        if kill_every:
            killer = Killer(cluster, random.Random(seed), {"worker": 3, "orchestrator": 1})
            print(f"killing a random process (SIGKILL) every ~{kill_every:g}s")
        print()
        return Batch(cluster, chosen, batch, rate, killer, kill_every).run(timeout)
    finally:
        cluster.stop()
        broker.discard(settings.broker_url, settings.all_queues())
        if owned is not None:
            owned.stop()


class Progress:
    """One status line: redrawn in place on a terminal, printed when it changes (at most
    once a second) anywhere else."""

    def __init__(self, stream: TextIO = sys.stdout):
        self.stream, self.tty = stream, stream.isatty()
        self.last, self.printed, self.printed_at = "", "", 0.0

    def show(self, line: str) -> None:
        if line == self.last:
            return
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
        elif time.monotonic() - self.printed_at >= 1.0:
            print(line, file=self.stream, flush=True)
            self.printed_at = time.monotonic()
            self.printed = line
        self.last = line

    def say(self, text: str) -> None:
        """A line of its own above the status line."""
        if self.tty:
            self.stream.write("\r\x1b[K")
        print(text, file=self.stream, flush=True)
        if self.tty:
            self.stream.write(self.last)
            self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
        elif self.last != self.printed:
            print(self.last, file=self.stream, flush=True)


def status_line(ended: int, total: int, by_state: Counter[str], kills: int) -> str:
    width = 24
    filled = width * ended // total if total else width
    counts = "  ".join(f"{state} {by_state.get(state, 0)}" for state in STATES)
    line = f"[{'#' * filled}{'.' * (width - filled)}] {ended}/{total} ended  {counts}"
    return line + (f"  kills {kills}" if kills else "")


STATES = ("pending", "running", "compensating", "completed", "compensated", "failed")


class Batch:
    """Submits the batch at a steady rate, shows the sagas' states as they change (and
    kills processes, with --kill-every), then prints the outcomes and the audit."""

    def __init__(
        self,
        cluster: Cluster,
        saga: Saga,
        orders: list[Item],
        rate: float,
        killer: Killer | None,
        kill_every: float | None,
    ):
        self.cluster, self.settings = cluster, cluster.settings
        self.saga, self.orders, self.rate = saga, orders, rate
        self.killer, self.kill_every = killer, kill_every
        self.sagas: dict[str, tuple[str, str]] = {}  # saga id -> (its client's key, label)
        self.progress = Progress()
        self.kills = 0

    def _submit_all(self) -> None:
        t0 = time.monotonic()
        for i, (label, document, faults) in enumerate(self.orders):
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the pace of the batch itself
            key = self.saga.prepare(document)[1]
            if faults:
                self.cluster.plan_faults(key, faults)
            try:
                saga_id = saga_app.submit(document, saga=self.saga.name, settings=self.settings)
            except Exception as exc:  # stored before the broker failed: the sweeper starts it
                self.progress.say(f"  submitting {key}: {exc}")
                continue
            self.sagas[saga_id] = (key, label)

    def run(self, timeout: float) -> int:
        started = time.monotonic()
        store = open_reader(self.settings.store())
        submitter = threading.Thread(target=self._submit_all, daemon=True)
        submitter.start()
        rng = random.Random(1)
        next_kill = started + (self.kill_every or 0)
        deadline = started + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            by_state = Counter(queries.count_by_state(store))
            ended = sum(by_state[s] for s in ("completed", "compensated", "failed"))
            self.progress.show(status_line(ended, len(self.orders), by_state, self.kills))
            if not submitter.is_alive() and ended >= len(self.sagas):
                break
            if self.killer is not None and self.kill_every:
                for name in self.killer.restart_due(now):
                    self.progress.say(f"  restarted {name}")
                if now >= next_kill and submitter.is_alive():
                    killed = self.killer.kill_one(now)
                    if killed:
                        self.kills += 1
                        self.progress.say(f"  SIGKILL {killed[1]} ({killed[0]})")
                    next_kill = now + rng.uniform(0.5, 1.5) * self.kill_every
            time.sleep(0.1)  # the display's refresh rate
        self.progress.done()
        return self._report(store, time.monotonic() - started, timeout)

    def _report(self, store: Any, elapsed: float, timeout: float) -> int:
        results: Counter[str] = Counter()
        pending = 0
        print(f"\n  {'key':<12} {'saga':<12} {'outcome':<12} {'took':>6}  {'case':<26} why")
        for saga_id, (order_id, label) in sorted(self.sagas.items(), key=lambda kv: kv[1]):
            view = queries.get_saga(store, saga_id)
            if not view.state.terminal:
                pending += 1
                print(f"  {order_id:<12} {saga_id[:10]:<12} {view.state.value:<12}")
                continue
            results[view.state.value] += 1
            took = _seconds(view.updated_at) - _seconds(view.created_at)
            why = view.error or ""
            skipped = [s for s in view.steps if s.state == "failed"]
            if view.state == "completed" and skipped:  # a best-effort step that failed
                why = f"{skipped[0].name} failed: {skipped[0].error}"
            print(
                f"  {order_id:<12} {saga_id[:10]:<12} {view.state.value:<12} {took:5.1f}s  "
                f"{label:<26} {why}"
            )
        print(
            f"\n{sum(results.values())} of {len(self.orders)} sagas ended in {elapsed:.1f}s: "
            + ", ".join(f"{n} {state}" for state, n in sorted(results.items()))
            + (f"; {self.kills} processes killed and restarted" if self.kills else "")
        )
        for alert in queries.alerts(store):
            print(f"ALERT saga {alert.saga_id}: compensation of {alert.step} failed: {alert.error}")
            print(f"      see it with: saga show {alert.saga_id}")
        if self.saga is ORDER:
            print("\nstock after the batch:")
            for row in inventory.list_stock(
                inventory.service.database(self.settings.service_database("inventory"))
            ):
                print(
                    f"  {row['sku']:<8} on hand {row['on_hand']:>4}  "
                    f"reserved {row['reserved']:>4}  available {row['available']:>4}"
                )
        if pending or len(self.sagas) < len(self.orders):
            print(f"\n{pending} saga(s) had not ended after {timeout:.0f}s")
            return 1
        report = audit.audit(self.settings)
        print(f"\naudit: {'clean' if report.ok else f'{len(report.violations)} violation(s)'}")
        for v in report.violations:
            print(f"  [{v.check}] {v.saga_id or ''} {v.message}")
        return 0 if report.ok else 1


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
