"""``python -m bench``: the saga orchestrator against a bare Celery chain, in one run.

Both sides run the same four service operations through the same step runner (their
SQLite writes, no random failures), each on one worker per service of Celery's solo pool
(``saga worker``'s default), on the same Redis: the sagas on the ``saga worker``
processes, the chains on ``bench.chain``'s, which send no outcome but the last.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import saga_app
from bench import signing, store
from bench.chain import build
from bench.chain import queue as chain_queue
from bench.workload import ChainRunner, Run, SagaRunner, order
from saga_app.app import configured
from saga_core import broker, config, database
from saga_core.config import Settings
from saga_core.database import Connection, Location
from saga_core.processes import descendants, wait_for
from saga_core.signing import new_keys
from saga_faults import switch
from saga_store import SagaView, open_reader, queries
from saga_tools import redis_server
from saga_tools.cluster import Child, Cluster, stop_all


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fresh(settings: Settings, name: str, database_url: str = "") -> Settings:
    data_dir = settings.data_dir / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    s = settings.with_(
        data_dir=data_dir,
        queue_prefix=f"{settings.queue_prefix}{name}.",
        database_url=database_url,
        # unsigned, as the peers run and as every figure before signing by default was
        # taken, unless keys are given (the signed system: what signing costs)
        insecure=not settings.keys,
    )
    Cluster(s).prepare({"WIDGET": 10_000_000})
    return s


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU the processes (and their children still running) have used."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        for p in [pid, *descendants(pid)]:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


#: The servers whose CPU a measured run counts, by their processes' command names.
REDIS: dict[str, tuple[str, ...]] = {"redis": ("redis-server",)}
POSTGRESQL: dict[str, tuple[str, ...]] = {"postgresql": ("postgres", "postmaster")}


def server_cpu_seconds(names: tuple[str, ...]) -> float:
    """CPU the servers on this machine named ``names`` (their processes' command name)
    have used: each server process's own, and its main process's ended children's
    (``cutime``, ``cstime``), so that PostgreSQL's backends that come and go during a run
    are counted."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() not in names:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            main = int(fields[1]) == 1 or b"-D" in (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile (a backend that ended)
        total += (int(fields[11]) + int(fields[12])) / tick
        if main:
            total += (int(fields[13]) + int(fields[14])) / tick  # the postmaster
    return total


def scaling(
    settings: Settings,
    postgres_url: str,
    count: int,
    orchestrators: list[int],
    rounds: int = 1,
) -> dict[str, Any]:
    """Sagas per second at saturation with one orchestrator on SQLite, then 1, 2, 3...
    orchestrators on PostgreSQL (a database of its own each, the services' too), on the
    same workers (one per service); and the CPU each kind of process spent per saga.

    The two systems of one orchestrator run ``rounds`` times, alternating, each row with
    its round: the machine's own pace moves between runs of a few seconds more than the
    two differ, and only runs side by side compare."""
    from saga_core import postgres

    rows = []
    plan = [(r, db, 1) for r in range(1, rounds + 1) for db in ("sqlite", "postgresql")]
    plan += [(1, "postgresql", n) for n in orchestrators if n != 1]
    for turn, db, n in plan:
        url = ""
        if db == "postgresql":
            url = postgres.create_database(postgres_url, f"saga_bench_{os.getpid()}_{n}_{turn}")
        try:
            # a name of its own each round: the client keeps one engine per settings
            s = _fresh(settings, f"scale-{db}-{n}-{turn}", url)
            cluster = Cluster(s, orchestrators=n)
            cluster.start()
            try:
                sagas = SagaRunner(s)
                sagas.run("warm", min(20, count))
                processes = {
                    "orchestrators": list(cluster.orchestrators),
                    "workers": list(cluster.workers.values()),
                }
                servers = POSTGRESQL if url else {}
                run = measured(processes, servers, sagas.run, "sat", count)
            finally:
                stop_all(cluster.children)
        finally:
            if url:
                postgres.drop_database(url)
        row = {
            "database": db,
            "orchestrators": n,
            "round": turn,
            "sagas_per_second": round(run.per_second, 1),
        }
        for kind, seconds in run.cpu.items():
            row[f"{kind}_cpu_ms_per_saga"] = round(seconds * 1000 / max(run.count, 1), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(s.data_dir, ignore_errors=True)
    return {"runs": rows}


def celery_worker(
    settings: Settings, module: str, name: str, queue: str, processes: int | None
) -> Child:
    """A plain Celery worker of app ``module``: prefork with ``processes`` pool children,
    or on the solo pool (the step in the worker's own process) where ``processes`` is None,
    as ``saga worker`` runs by default."""
    argv = [sys.executable, "-m", "celery", "-A", module, "worker", "-Q", queue]
    argv += ["-P", "solo"] if processes is None else ["-P", "prefork", "-c", str(processes)]
    argv += ["-l", "WARNING"]
    argv += ["--without-mingle", "--without-gossip"]
    env = {**settings.to_env(), "PYTHONUNBUFFERED": "1"}
    return Child(f"{name} worker", argv, env, settings.data_dir / "logs" / f"{name}.log")


def measured(
    processes: dict[str, list[Child]],
    servers: dict[str, tuple[str, ...]],
    run: Callable[..., Run],
    *args: Any,
) -> Run:
    """``run(*args)``, with the CPU spent meanwhile by each kind of ``processes`` (their pool
    children included), by each of ``servers`` (``server_cpu_seconds``) and by this process
    (the client: submitting, and polling for the ends)."""

    def now() -> dict[str, float]:
        cpu = {kind: cpu_seconds([c.pid for c in group]) for kind, group in processes.items()}
        cpu.update({kind: server_cpu_seconds(names) for kind, names in servers.items()})
        cpu["client"] = time.process_time()
        return cpu

    before = now()
    result = run(*args)
    after = now()
    result.cpu.update({kind: after[kind] - before[kind] for kind in after})
    return result


def compare(
    settings: Settings,
    count: int,
    latency_count: int,
    load: float,
    rounds: int = 2,
    peers: bool = False,
    prefork: bool = False,
    latency_parts: int = 6,
) -> dict[str, Any]:
    """Saturation throughput, then latency at a fixed offered load (``load`` times the
    chain's saturation), of the bare chain, the sagas and, with ``peers``, celery-saga and
    DBOS on SQLite, all on the same steps and the same Redis; with ``prefork``, the sagas
    also on prefork service workers (``saga worker --pool prefork``, a system of its own).
    The chain runs on the pool the sagas' workers use by default (solo), so that their
    ratio measures what the saga adds, not a pool's cost.

    Every system is up for the whole run, and each saturation run is taken ``rounds``
    times, one system after the other, as is each latency run, in ``latency_parts`` parts:
    the machine's speed drifts by a fifth from one minute to the next here, and runs in
    turn put that drift on every side alike (in parts of a second or two: a slow spell
    lasts seconds, and weighs more on the system with more hops per order)."""
    # unsigned, as the peers are: the signed system below shows what signing costs
    s = _fresh(settings, "compare").with_(keys={}, insecure=True)
    cluster = Cluster(s)
    quiet = Cluster(s.with_(heartbeat_interval=0.0))
    chain_workers = [
        celery_worker(s, "bench.chain", f"chain-{name}", chain_queue(s, name), None)
        for name in s.services
    ]
    others = list(chain_workers)
    processes: dict[str, dict[str, list[Child]]] = {
        "chain": {"workers": chain_workers},
        "saga": {"workers": list(cluster.workers.values()), "orchestrator": [cluster.orchestrator]},
    }
    sagas = SagaRunner(s)
    systems: dict[str, Callable[..., Run]] = {
        "chain": ChainRunner(build(s), s).run,
        "saga": sagas.run,
    }
    # What signing costs: the same sagas on a system of their own that signs and checks
    # every message (saga_core.signing), each worker holding its own service's key.
    signed_settings = _fresh(settings, "compare-signed").with_(keys=new_keys(settings.identities))
    signed_cluster = Cluster(signed_settings)
    others.extend(signed_cluster.children)
    systems["saga_signed"] = SagaRunner(signed_settings).run
    processes["saga_signed"] = {
        "workers": list(signed_cluster.workers.values()),
        "orchestrator": [signed_cluster.orchestrator],
    }
    if prefork:
        prefork_settings = _fresh(settings, "compare-prefork").with_(keys={}, insecure=True)
        prefork_cluster = Cluster(prefork_settings, pool="prefork")
        others.extend(prefork_cluster.children)
        systems["saga_prefork_pool"] = SagaRunner(prefork_settings).run
        processes["saga_prefork_pool"] = {
            "workers": list(prefork_cluster.workers.values()),
            "orchestrator": [prefork_cluster.orchestrator],
        }
    if peers:
        from bench.peer_celery_saga import CelerySagaRunner
        from bench.peer_celery_saga import queue as celery_saga_queue
        from bench.peer_dbos import DbosRunner

        celery_saga_worker = celery_worker(
            s, "bench.peer_celery_saga", "celery-saga", celery_saga_queue(s), 4
        )
        others.append(celery_saga_worker)
        processes["celery_saga"] = {"workers": [celery_saga_worker]}
        dbos = DbosRunner(s)
        systems["celery_saga"] = CelerySagaRunner(s).run
        systems["dbos_sequential"] = dbos.run
        systems["dbos_threaded"] = functools.partial(dbos.run, threads=8)
    for child in [*cluster.children, *others]:
        child.start()
    try:
        for name, run in systems.items():
            if not name.startswith("dbos"):  # a DBOS run warms up in its own process
                run(f"warm-{name}", 20)
        saturation: dict[str, list[Run]] = {name: [] for name in systems}
        for n in range(rounds):
            for name, run in systems.items():
                saturation[name].append(
                    measured(processes.get(name, {}), REDIS, run, f"sat{n}-{name}", count)
                )
        merged = {name: Run.merged(runs) for name, runs in saturation.items()}
        rate = max(1.0, merged["chain"].per_second * load)
        # in turns too, in parts: a slow minute would otherwise fall on one system's
        # latency alone (DBOS sequential runs one at a time: it cannot be offered a load)
        loaded = [name for name in systems if name != "dbos_sequential"]
        by_part: dict[str, list[Run]] = {name: [] for name in loaded}
        for n in range(latency_parts):
            for name in loaded:
                part = latency_count // latency_parts + (n < latency_count % latency_parts)
                by_part[name].append(systems[name](f"lat{n}-{name}", part, rate=rate))
        at_load = {name: Run.merged(parts) for name, parts in by_part.items()}
        orchestrator_rss = rss_mb(cluster.orchestrator.pid)
        # What liveness costs: the same sagas with the workers' heartbeats on, then off, in
        # turns like every other comparison here, each run on freshly started workers.
        by_heartbeats: dict[bool, list[Run]] = {True: [], False: []}
        for heartbeats in (True, False) * rounds:
            stop_all([*cluster.workers.values(), *quiet.workers.values()])
            for worker in (cluster if heartbeats else quiet).workers.values():
                worker.start()
            runs = by_heartbeats[heartbeats]
            sagas.run(f"warm-{heartbeats:d}{len(runs)}", 20)
            runs.append(sagas.run(f"sat-{heartbeats:d}{len(runs)}", count))
    finally:
        stop_all([*cluster.children, *quiet.workers.values(), *others])
    shutil.rmtree(s.data_dir, ignore_errors=True)

    def figures(name: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "saturation": merged[name].summary(),
            "saturation_per_second_by_round": [round(r.per_second, 1) for r in saturation[name]],
        }
        if name in at_load:
            out["at_load"] = at_load[name].summary()
        return out

    result: dict[str, Any] = {
        "rounds": rounds,
        "latency_parts": latency_parts,
        "offered_load_per_second": round(rate, 1),
        "clock": CLOCK,
        "chain": figures("chain"),
        "saga": figures("saga"),
        "ratio_throughput": round(merged["saga"].per_second / merged["chain"].per_second, 3),
        "latency_ratios": latency_ratios(at_load["saga"], at_load["chain"]),
        "saga_saturation_per_second_with_heartbeats": [
            round(r.per_second, 1) for r in by_heartbeats[True]
        ],
        "saga_saturation_per_second_without_heartbeats": [
            round(r.per_second, 1) for r in by_heartbeats[False]
        ],
        "ratio_throughput_with_to_without_heartbeats": round(
            statistics.fmean(r.per_second for r in by_heartbeats[True])
            / statistics.fmean(r.per_second for r in by_heartbeats[False]),
            3,
        ),
        "orchestrator_rss_mb": round(orchestrator_rss, 1),
    }
    result["saga_signed"] = figures("saga_signed")
    shutil.rmtree(signed_settings.data_dir, ignore_errors=True)
    if prefork:
        result["saga_prefork_pool"] = figures("saga_prefork_pool")
        shutil.rmtree(prefork_settings.data_dir, ignore_errors=True)
    if peers:
        result["peers"] = {
            name: figures(name) for name in ("celery_saga", "dbos_sequential", "dbos_threaded")
        }
        result["peer_latency_ratios"] = {
            peer: latency_ratios(at_load["saga"], at_load[peer])
            for peer in ("celery_saga", "dbos_threaded")
        }
    return result


#: How the latencies are read, said in the output beside them.
CLOCK = (
    "latency: from the client's hand-over (before validation) to the moment one polling "
    "reader in the client sees the end, the same for every system (bench/clock.py); "
    "'recorded': the system's own record (a saga's history, celery-saga's record, a DBOS "
    "call's return), the clock of figures before 2026-12-06"
)


def latency_ratios(mine: Run, theirs: Run) -> dict[str, float | None]:
    """p50 and p95 of ``mine`` over ``theirs`` at the offered load, by the one clock; and
    ``_recorded``, as figures before the one clock were read: each side by its own record
    (the chain has none: it was timed by its client already)."""
    out: dict[str, float | None] = {}
    for p in (50, 95):
        base = theirs.percentile(p)
        out[f"p{p}"] = round(mine.percentile(p) / base, 3) if base else None
        if mine.recorded:
            old_base = theirs.percentile(p, recorded=bool(theirs.recorded))
            old = mine.percentile(p, recorded=True)
            out[f"p{p}_recorded"] = round(old / old_base, 3) if old_base else None
    return out


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The headline: this project against the bare chain and the peers, from one run."""
    out: dict[str, Any] = {}
    if "store" in results:
        rates = results["store"]
        out["store_transitions_per_second"] = rates["sqlite_one_per_transaction"]
        out["store_batched_transitions_per_second"] = rates["sqlite_batched"]
        # what SQLite itself does here today: the machine's speed, for reading the above
        out["store_to_sqlite_floor"] = round(
            rates["sqlite_one_per_transaction"] / rates["sqlite_floor"], 3
        )
    if "signing" in results:
        out["signing_ms_per_saga_derived"] = results["signing"]["derived_ms_per_saga"]
    out.update(postgresql_ratios(results.get("scaling", {}).get("runs", [])))
    compared = results.get("compare")
    if compared is None:
        return out
    sagas = compared["saga"]["saturation"]["per_second"]
    out["saga_to_chain_throughput"] = compared["ratio_throughput"]
    # the one clock's; "_recorded": the saga's history, as every figure before it was read
    for key, value in compared["latency_ratios"].items():
        out[f"saga_to_chain_{key}_at_load"] = value
    signed = compared["saga_signed"]
    out["saga_signed_to_saga_throughput"] = round(signed["saturation"]["per_second"] / sagas, 3)
    if "signing" in results:
        # the same, from what signing alone costs: its CPU beside all a saga takes
        all_cpu = compared["saga"]["saturation"]["cpu_ms_each"]["all"]
        derived = results["signing"]["derived_ms_per_saga"]
        out["signing_share_of_saga_cpu_derived"] = round(derived / all_cpu, 4)
    out["saga_signed_to_saga_p50_at_load"] = round(
        signed["at_load"]["p50_ms"] / compared["saga"]["at_load"]["p50_ms"], 3
    )
    prefork = compared.get("saga_prefork_pool")
    if prefork:
        out["saga_prefork_pool_to_saga_throughput"] = round(
            prefork["saturation"]["per_second"] / sagas, 3
        )
    found = results.get("peers")
    if found:
        best_dbos = max(
            found["dbos_sequential"]["saturation"]["per_second"],
            found["dbos_threaded"]["saturation"]["per_second"],
        )
        out["saga_to_celery_saga_throughput"] = round(
            sagas / found["celery_saga"]["saturation"]["per_second"], 3
        )
        out["saga_to_best_dbos_throughput"] = round(sagas / best_dbos, 3)
        for peer, found_ratios in compared["peer_latency_ratios"].items():
            for key, value in found_ratios.items():
                out[f"saga_to_{peer}_{key}_at_load"] = value
    return out


def postgresql_ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One orchestrator on PostgreSQL against the SQLite system, from the scaling runs of
    the same bench run: sagas/s, and the CPU per saga of the workers and of everything
    (the orchestrator, the workers, the client and, on PostgreSQL, its server)."""
    pairs: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        if r["orchestrators"] == 1:
            pairs.setdefault(r.get("round", 1), {})[r["database"]] = r
    both = [p for _, p in sorted(pairs.items()) if {"sqlite", "postgresql"} <= set(p)]
    if not both:
        return {}

    def everything(row: dict[str, Any]) -> float:
        return sum(v for k, v in row.items() if k.endswith("_cpu_ms_per_saga"))

    def median(values: list[float], digits: int) -> float:
        return round(statistics.median(values), digits)

    throughput = [
        p["postgresql"]["sagas_per_second"] / p["sqlite"]["sagas_per_second"] for p in both
    ]
    workers = [
        p["postgresql"]["workers_cpu_ms_per_saga"] / p["sqlite"]["workers_cpu_ms_per_saga"]
        for p in both
    ]
    return {
        # the median of the rounds, each the two systems side by side
        "postgresql_to_sqlite_throughput": median(throughput, 3),
        "postgresql_to_sqlite_throughput_by_round": [round(t, 3) for t in throughput],
        "workers_cpu_ms_per_saga_sqlite": median(
            [p["sqlite"]["workers_cpu_ms_per_saga"] for p in both], 2
        ),
        "workers_cpu_ms_per_saga_postgresql": median(
            [p["postgresql"]["workers_cpu_ms_per_saga"] for p in both], 2
        ),
        "postgresql_to_sqlite_workers_cpu": median(workers, 3),
        "postgresql_to_sqlite_workers_cpu_by_round": [round(w, 3) for w in workers],
        "all_cpu_ms_per_saga_sqlite": median([everything(p["sqlite"]) for p in both], 2),
        "all_cpu_ms_per_saga_postgresql": median([everything(p["postgresql"]) for p in both], 2),
    }


def recovery(settings: Settings, in_flight: int) -> dict[str, Any]:
    """Seconds from an orchestrator's restart until every saga in flight has its command
    sent again."""
    s = _fresh(settings, "recovery")
    cluster = Cluster(s)
    for child in cluster.workers.values():
        child.start()
    try:
        # sagas in flight: submitted while the shipping worker is down, so they all wait
        cluster.workers["shipping"].stop()
        runner = SagaRunner(s)
        ids = [runner_submit(runner, "rec", n) for n in range(in_flight)]
        store_db = open_reader(s.store())
        t0 = time.time()
        cluster.orchestrator.start()
        wait_for(
            lambda: queries.armed_after(store_db, t0 + s.step_timeout) >= in_flight,
            120,
            "every saga to be resumed",
        )
        resumed = time.time() - t0
        cluster.workers["shipping"].start()
        wait_for(lambda: not queries.active_saga_ids(store_db), 300, "the sagas to end")
        del ids
    finally:
        cluster.stop()
    return {
        "in_flight": in_flight,
        "orchestrator_restart_to_all_resumed_s": round(resumed, 2),
    }


def _ended(store_db: Connection, saga_id: str) -> SagaView | None:
    view = queries.get_saga(store_db, saga_id)
    return view if view.state.terminal else None


def kill_recovery(settings: Settings, kills: int, label: str) -> dict[str, Any]:
    """Seconds from a worker's SIGKILL in the middle of a step until the step runs again,
    ``kills`` times in a row: each kill lands at a random moment of a charge under way (a
    fault plan makes it take 3 s), and the worker is started again at once, as a
    supervisor would."""
    s = switch.switched(_fresh(settings, f"kill-{label}"), True)
    cluster = Cluster(s)
    cluster.start()
    payment = cluster.workers["payment"]
    store_db = open_reader(s.store())
    times: list[float] = []
    redispatched = 0
    try:
        cluster.wait_ready()
        for n in range(kills):
            cluster.plan_faults(f"kill-{n:07d}", {"charge_payment": {"delay_seconds": 3}})
            saga_id = saga_app.submit(order("kill", n), settings=s)
            marker = s.data_dir / "running" / f"charge_payment.{saga_id}:charge_payment"
            wait_for(marker.exists, 60, "the slow charge to start")
            marker.unlink()
            time.sleep(random.uniform(0, 2.5))  # the kill's moment in the step, not a wait
            payment.kill()
            killed = time.time()
            payment.stop()
            payment.start()
            wait_for(marker.exists, s.step_timeout * 3 + 30, "the charge to run again")
            times.append(time.time() - killed)
            ended = functools.partial(_ended, store_db, saga_id)
            view = wait_for(ended, 120, "the saga to end")
            assert view is not None
            redispatched += view.step("charge_payment").attempts - 1
    finally:
        cluster.stop()
        broker.discard(s.broker_url, s.all_queues())
    ordered = sorted(times)
    return {
        "broker": label,
        "kills": len(times),
        "p50_s": round(ordered[len(ordered) // 2], 2),
        "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
        "max_s": round(ordered[-1], 2),
        "steps_sent_again": redispatched,
        "step_timeout_s": s.step_timeout,
        "liveness_timeout_s": s.liveness_timeout,
    }


def runner_submit(runner: SagaRunner, tag: str, n: int) -> str:
    return saga_app.submit(order(tag, n), settings=runner.settings)


def growth(settings: Settings, fills: list[int], count: int) -> list[dict[str, Any]]:
    """Throughput, orchestrator memory and the start-up recovery scan with N finished
    sagas already in the store."""
    rows = []
    for fill in fills:
        s = _fresh(settings, f"growth{fill}")
        fill_seconds = store.fill_finished(s.store(), fill)
        t0 = time.perf_counter()
        queries.active_saga_ids(open_reader(s.store()))
        scan = time.perf_counter() - t0
        cluster = Cluster(s).start()
        try:
            run = SagaRunner(s).run(f"g{fill}", count)
            rss = rss_mb(cluster.orchestrator.pid)
        finally:
            cluster.stop()
        rows.append(
            {
                "finished_sagas": fill,
                "fill_s": round(fill_seconds, 1),
                "recovery_scan_ms": round(scan * 1000, 2),
                "sagas_per_second": round(run.per_second, 1),
                "orchestrator_rss_mb": round(rss, 1),
            }
        )
        shutil.rmtree(s.data_dir, ignore_errors=True)
    return rows


def store_rates(data_dir: Path, postgres_url: str, sagas: int) -> dict[str, Any]:
    """Store transitions per second on SQLite and on PostgreSQL: one per transaction (as a
    client's submission), and as the orchestrator applies them (batches of 200); and the
    same statements one per transaction with none of the store's Python (SQLite's floor
    on this machine, today)."""
    rates: dict[str, Any] = {
        "sqlite_floor": round(store.sqlite_floor_per_second(data_dir / "t0.db", sagas)),
        "sqlite_one_per_transaction": round(
            store.transitions_per_second(data_dir / "t1.db", sagas)
        ),
        "sqlite_batched": round(store.batched_transitions_per_second(data_dir / "t2.db", sagas)),
    }
    why_not = database.unreachable(postgres_url)
    if why_not:
        rates["postgresql"] = {"skipped": why_not}
        return rates
    from saga_core import postgres

    for kind, measure in (
        ("one_per_transaction", store.transitions_per_second),
        ("batched", store.batched_transitions_per_second),
    ):
        url = postgres.create_database(postgres_url, f"saga_bench_store_{os.getpid()}")
        try:
            rates[f"postgresql_{kind}"] = round(measure(Location(url, "saga"), sagas))
        finally:
            postgres.drop_database(url)
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--count", type=int, default=600, help="chains and sagas at saturation")
    p.add_argument("--latency-count", type=int, default=600)
    p.add_argument(
        "--latency-parts", type=int, default=6, help="latency runs of each system, taken in turn"
    )
    p.add_argument(
        "--rounds", type=int, default=2, help="saturation runs of each system, taken in turn"
    )
    p.add_argument(
        "--load",
        type=float,
        default=0.5,
        help="offered load for latency, as a fraction of the chain's saturation",
    )
    p.add_argument("--in-flight", type=int, default=1000)
    p.add_argument("--kills", type=int, default=20, help="worker SIGKILLs, on each broker")
    p.add_argument(
        "--amqp-url",
        default="amqp://guest:guest@127.0.0.1:5672//",
        help="the RabbitMQ the kills are also measured on (skipped where none answers)",
    )
    p.add_argument(
        "--fill", default="0,100000,1000000", help="finished sagas in the store for the growth runs"
    )
    p.add_argument("--growth-count", type=int, default=300)
    p.add_argument("--json", default="bench-results.json")
    p.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="the PostgreSQL the store and the scaling runs are also measured on (skipped "
        "where none answers)",
    )
    p.add_argument("--orchestrators", default="1,2,3", help="orchestrators in the scaling runs")
    p.add_argument("--scaling-count", type=int, default=600)
    p.add_argument(
        "--scaling-rounds",
        type=int,
        default=3,
        help="rounds of SQLite and PostgreSQL with one orchestrator, alternating; the "
        "ratios are their medians",
    )
    p.add_argument("--store-sagas", type=int, default=2000, help="sagas in the store runs")
    p.add_argument(
        "--peers",
        action="store_true",
        help="also run celery-saga and DBOS on the same steps (pip install -e .[peers])",
    )
    p.add_argument(
        "--prefork",
        action="store_true",
        help="also run the sagas on prefork service workers (saga worker --pool prefork)",
    )
    p.add_argument("--skip", default="", help="comma list of: compare,recovery,kill,growth,scaling")
    args = p.parse_args(argv)
    if args.peers:
        try:
            import celery_saga  # noqa: F401
            import dbos  # noqa: F401
        except ImportError as exc:
            p.error(f"--peers needs the peers installed (pip install -e .[peers]): {exc}")
    logging.basicConfig(level=logging.WARNING)
    skip = set(filter(None, args.skip.split(",")))

    base = configured(config.load())
    data_dir = base.data_dir / f"bench-{os.getpid()}"
    url, owned = redis_server.ensure(base.broker_url, data_dir)
    settings = base.with_(
        broker_url=url, data_dir=data_dir, queue_prefix=f"{base.queue_prefix}bench{os.getpid()}."
    )
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    }
    try:
        results["store"] = store_rates(data_dir, args.postgres_url, args.store_sagas)
        print(json.dumps(results["store"], indent=2), flush=True)
        results["signing"] = signing.cost()
        print(json.dumps(results["signing"], indent=2), flush=True)
        if "compare" not in skip:
            compared = compare(
                settings,
                args.count,
                args.latency_count,
                args.load,
                args.rounds,
                args.peers,
                args.prefork,
                args.latency_parts,
            )
            if "peers" in compared:
                results["peers"] = compared.pop("peers")
                print(json.dumps(results["peers"], indent=2), flush=True)
            results["compare"] = compared
            print(json.dumps(compared, indent=2), flush=True)
        if "recovery" not in skip:
            results["recovery"] = recovery(settings, args.in_flight)
            print(json.dumps(results["recovery"], indent=2), flush=True)
        if "kill" not in skip:
            results["kill"] = {"redis": kill_recovery(settings, args.kills, "redis")}
            if broker.reachable(args.amqp_url, timeout=3):
                on_amqp = settings.with_(broker_url=args.amqp_url)
                results["kill"]["rabbitmq"] = kill_recovery(on_amqp, args.kills, "rabbitmq")
            else:
                results["kill"]["rabbitmq"] = {"skipped": f"no RabbitMQ answers at {args.amqp_url}"}
            print(json.dumps(results["kill"], indent=2), flush=True)
        if "scaling" not in skip:
            why_not = database.unreachable(args.postgres_url)
            if why_not:
                results["scaling"] = {"skipped": why_not}
            else:
                orchestrators = [int(n) for n in args.orchestrators.split(",") if n]
                results["scaling"] = scaling(
                    settings,
                    args.postgres_url,
                    args.scaling_count,
                    orchestrators,
                    args.scaling_rounds,
                )
        if "growth" not in skip:
            fills = [int(x) for x in args.fill.split(",") if x]
            results["growth"] = growth(settings, fills, args.growth_count)
            print(json.dumps(results["growth"], indent=2), flush=True)
    finally:
        if owned is not None:
            owned.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    results = {"ratios": ratios(results), **results}
    print("ratios:", json.dumps(results["ratios"], indent=2))
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
