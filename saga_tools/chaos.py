"""The chaos campaign: real processes, real SIGKILLs, then the audit.

It starts one worker per service and the orchestrator, submits orders at a steady rate
with random step and compensation failures, and meanwhile SIGKILLs at random a worker's
main process, a worker's child (a solo worker's supervised Celery process, which its
supervisor starts again; a prefork worker's pool child, which its main process replaces)
or the orchestrator, restarting each killed main process after a random delay. Optionally
it runs on a Redis of its own and kills and restarts that once, losing every queued
message. Then it waits for every saga to end and runs the audit. The same ``seed`` replays
the same schedule of faults.
"""

from __future__ import annotations

import logging
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import saga_app
from saga_app import Saga
from saga_app.app import configured
from saga_app.app import of as app_of
from saga_core import broker, dead_letters
from saga_core.config import Settings
from saga_core.signing import new_keys
from saga_faults import switch
from saga_faults.killer import KINDS, Killer
from saga_faults.switch import FailureRates
from saga_store import open_reader, queries
from saga_tools import audit, redis_server
from saga_tools.cluster import Cluster

log = logging.getLogger("saga.chaos")


@dataclass
class Options:
    orders: int = 1000
    rate: float = 25.0  # orders submitted per second
    kill_every: float = 3.0  # mean seconds between kills
    kills: int | None = None  # stop after this many kills (default: until all are submitted)
    seed: int = 1
    transient_rate: float = 0.05
    business_rate: float = 0.02
    compensation_failure_rate: float = 0.02  # orders whose one compensation never succeeds
    own_redis: bool = False
    restart_redis: bool = False
    step_timeout: float = 5.0
    settle_timeout: float = 300.0
    # "" keeps every database in SQLite files; a postgresql:// URL names the server on
    # which the campaign creates a database of its own (dropped after).
    database: str = ""
    orchestrators: int = 1
    replicas: int = 1  # worker processes per service
    pool: str | None = None  # the workers' Celery pool; None: saga worker's default
    saga: str | None = None  # the app's saga to run; None: its first


@dataclass
class Result:
    final_states: dict[str, int]
    kills: Counter[str] = field(default_factory=Counter)
    redispatches: int = 0
    duplicate_outcomes: int = 0
    submit_errors: int = 0
    submit_seconds: float = 0.0
    settle_seconds: float = 0.0
    violations: list[audit.Violation] = field(default_factory=list)
    unsettled: int = 0
    exits: int = 0  # processes that died without being killed (restarted)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unsettled

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "final_states": self.final_states,
            "kills": dict(self.kills),
            "redispatches": self.redispatches,
            "duplicate_outcomes": self.duplicate_outcomes,
            "submit_errors": self.submit_errors,
            "submit_seconds": round(self.submit_seconds, 1),
            "settle_seconds": round(self.settle_seconds, 1),
            "unsettled": self.unsettled,
            "exits": self.exits,
            "violations": [v.__dict__ for v in self.violations],
        }


def failing_compensation(saga: Saga, rng: random.Random) -> dict[str, Any] | None:
    """A fault plan in which one compensation never succeeds: a step that can be undone
    takes effect, the saga's last step that is not best-effort is refused, and the undo
    keeps failing, so the saga ends failed, with an alert. None where the saga has no step
    to undo before its last one."""
    steps = [s for s in saga.steps if not s.best_effort]
    undoable = [s for s in steps[:-1] if s.compensation]
    if not undoable:
        return None
    undo = rng.choice(undoable).compensation
    return {str(undo): {"fail_transient": 1000}, steps[-1].action: {"fail_business": True}}


class Campaign:
    def __init__(self, settings: Settings, opts: Options):
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.base = configured(settings)  # the app's services: their queues and keys
        self.settings = self.base
        self.redis: redis_server.OwnedRedis | None = None
        self.cluster: Cluster | None = None
        self.killer: Killer | None = None
        self.result = Result({})
        self.submitted: list[str] = []
        self.database = ""  # the PostgreSQL database of this campaign, where it has one
        self.saga: Saga = app_of(settings).saga(opts.saga)
        self.sample = self.saga.samples("a campaign")

    # --- set-up and tear-down ---------------------------------------------------------------

    def start(self) -> None:
        data_dir = self.base.data_dir / "chaos"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        url = self.base.broker_url
        if self.opts.own_redis:
            self.redis = redis_server.OwnedRedis(data_dir / "redis.pid")
            url = self.redis.start()
        elif not broker.reachable(url):
            url, self.redis = redis_server.ensure(url, data_dir)
        database_url = ""
        if self.opts.database:
            from saga_core import postgres

            name = f"saga_chaos_{uuid.uuid4().hex[:8]}"
            self.database = database_url = postgres.create_database(self.opts.database, name)
        self.settings = self.base.with_(
            broker_url=url,
            data_dir=data_dir,
            database_url=database_url,
            service_database_urls={},
            # Queues of this run only: a killed worker's unacknowledged message comes back
            # to its queue when the visibility timeout passes, minutes later, and must not
            # be run by a later campaign's workers on the same Redis.
            queue_prefix=f"{self.base.queue_prefix}chaos.{uuid.uuid4().hex[:8]}.",
            # Signed messages, with keys made for this run where none are configured.
            keys=self.base.keys or new_keys(self.base.identities),
            step_timeout=self.opts.step_timeout,
            sweep_interval=0.5,
        )
        rates = FailureRates(self.opts.transient_rate, self.opts.business_rate)
        self.settings = switch.switched(self.settings, True, {"*": rates})
        self.cluster = Cluster(
            self.settings,
            orchestrators=self.opts.orchestrators,
            replicas=self.opts.replicas,
            pool=self.opts.pool,
        )
        self.cluster.prepare().start()
        self.killer = Killer(self.cluster, self.rng, {kind: 1 for kind in KINDS})

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            leftovers = [*self.settings.all_queues(), self.settings.queue(dead_letters.QUEUE)]
            broker.discard(self.settings.broker_url, leftovers)
        if self.redis is not None:
            self.redis.stop()
        if self.database:
            from saga_core import postgres

            postgres.drop_database(self.database)

    # --- the campaign -----------------------------------------------------------------------

    def inputs(self) -> list[tuple[Any, str, dict[str, Any] | None]]:
        """The campaign's inputs, each with its key and, for a few, a fault plan."""
        made = []
        for n in range(self.opts.orders):
            document = self.sample(n, self.rng)
            plan = None
            if self.rng.random() < self.opts.compensation_failure_rate:
                plan = failing_compensation(self.saga, self.rng)
            made.append((document, self.saga.prepare(document)[1], plan))
        return made

    def run(self) -> Result:
        orders = self.inputs()
        done = threading.Event()
        submitter = threading.Thread(target=self._submit_all, args=(orders, done), daemon=True)
        started = time.monotonic()
        submitter.start()
        next_kill = started + self.rng.expovariate(1 / self.opts.kill_every)
        redis_restart_at = started + (self.opts.orders / self.opts.rate) / 2
        assert self.killer is not None
        while not done.is_set() or self.killer.restarts or self._kills_owed():
            now = time.monotonic()
            self.killer.restart_due(now)
            wanted = not done.is_set() if self.opts.kills is None else self._kills_owed()
            if wanted and now >= next_kill:
                self._kill_one(now)
                next_kill = now + self.rng.expovariate(1 / self.opts.kill_every)
            if self.opts.restart_redis and self.redis is not None and now >= redis_restart_at:
                self._restart_redis()
                redis_restart_at = float("inf")
            done.wait(0.05)
        submitter.join()
        self.result.submit_seconds = time.monotonic() - started
        self._settle()
        return self.result

    def _submit_all(
        self, inputs: list[tuple[Any, str, dict[str, Any] | None]], done: threading.Event
    ) -> None:
        assert self.cluster is not None
        t0 = time.monotonic()
        for i, (document, key, faults) in enumerate(inputs):
            delay = t0 + i / self.opts.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the steady offered load itself
            if faults:
                self.cluster.plan_faults(key, faults)
            try:
                self.submitted.append(
                    saga_app.submit(document, saga=self.saga.name, settings=self.settings)
                )
            except Exception as exc:  # a broker outage: the saga is stored, the sweeper sends it
                self.result.submit_errors += 1
                log.warning("submitting %s: %s", key, exc)
        done.set()

    def _kills_owed(self) -> bool:
        return self.opts.kills is not None and sum(self.result.kills.values()) < self.opts.kills

    def _kill_one(self, now: float) -> None:
        assert self.killer is not None
        killed = self.killer.kill_one(now)
        if killed is not None:
            self.result.kills[killed[0]] += 1

    def _restart_redis(self) -> None:
        assert self.redis is not None
        port = self.redis.port
        log.info("killing the broker, losing every queued message")
        self.redis.stop(hard=True)
        time.sleep(self.rng.uniform(1.0, 3.0))  # the outage itself
        self.redis.start(port)
        self.result.kills["redis"] += 1

    def _settle(self) -> None:
        store = open_reader(self.settings.store())
        t0 = time.monotonic()
        deadline = t0 + self.opts.settle_timeout
        while queries.active_saga_ids(store) and time.monotonic() < deadline:
            if self.killer is not None:
                self.killer.restart_due(time.monotonic())
            time.sleep(0.5)  # polling the store for the sagas' end
        self.result.settle_seconds = time.monotonic() - t0
        self.result.unsettled = len(queries.active_saga_ids(store))
        self.result.exits = self.killer.exits if self.killer is not None else 0
        counters = queries.counters(store)
        self.result.redispatches = counters.get("redispatches", 0)
        self.result.duplicate_outcomes = counters.get("duplicate_outcomes", 0)
        report = audit.audit(self.settings, settle_seconds=self.opts.settle_timeout)
        self.result.final_states = report.sagas_by_state
        self.result.violations = report.violations


def run(settings: Settings, opts: Options) -> Result:
    campaign = Campaign(settings, opts)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        campaign.start()
        return campaign.run()
    finally:
        campaign.stop()
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
