"""DBOS Transact (3.4; ``pip install -e .[peers]``) running the order saga's four steps
in its own process: ``python -m bench.peer_dbos --count N [--threads T] [--rate R]``, the
settings in the environment; prints the run as one JSON object. Each workflow is timed by
the bench's one clock (``bench.clock``): a reader thread in this process sees its call
return.

A DBOS workflow of four steps, each calling the same services' step runners as a saga's
steps do; DBOS checkpoints each step in its system database, an SQLite file (WAL) in the
data directory. Sequential (no ``--threads``): one workflow at a time, as one request
handler runs them; threaded: ``T`` threads taking workflows from one queue.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dbos import DBOS

from bench import clock
from bench.clock import Ends
from bench.workload import Run, Steps, pace, step_commands
from saga_core import config
from saga_core.config import Settings
from saga_core.messages import Command
from saga_core.processes import exit_with_parent


class DbosRunner:
    """Workflows through DBOS, in a process of its own per run (DBOS is one per process)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def run(self, tag: str, count: int, threads: int = 0, rate: float | None = None) -> Run:
        argv = [sys.executable, "-m", "bench.peer_dbos", "--tag", tag, "--count", str(count)]
        argv += ["--threads", str(threads), "--rate", str(rate or 0)]
        env = {**os.environ, **self.settings.to_env(), "SAGA_PARENT_PID": str(os.getpid())}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            raise RuntimeError(f"the DBOS run failed: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.splitlines()[-1])
        return Run(
            count,
            result["seconds"],
            result["latencies"],
            {"dbos": result["cpu_seconds"]},
            result["recorded"],
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer_dbos", description=__doc__)
    p.add_argument("--tag", required=True, help="order ids' prefix: one per run")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="0: one workflow at a time")
    p.add_argument("--rate", type=float, default=0.0, help="workflows started per second")
    p.add_argument("--warm", type=int, default=20)
    args = p.parse_args(argv)
    settings = config.load()
    if settings.parent_pid:
        exit_with_parent(settings.parent_pid)
    path = settings.data_dir / "dbos.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
    steps = Steps(settings)

    @DBOS.step()
    def step(operation: str, wire: dict[str, Any]) -> Any:
        return steps.run(Command.from_wire(operation, wire))

    @DBOS.workflow()
    def order(commands: list[tuple[str, dict[str, Any]]]) -> None:
        for operation, wire in commands:
            step(operation, wire)

    returned: set[str] = set()

    def one(tag: str, n: int) -> float:
        """Run order ``n``; returns when it ended, and says so to the bench's reader."""
        order([(c.operation, c.to_wire()) for c in step_commands(tag, n)])
        returned.add(f"{tag}-{n}")
        return time.monotonic()

    DBOS(
        config={
            "name": "peer-dbos",
            "system_database_url": f"sqlite:///{path}",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:
        for n in range(args.warm):
            one(f"{args.tag}-warm", n)
        started: list[float] = []
        ended: list[float] = []
        interval = clock.AT_LOAD if args.rate else clock.SATURATED
        cpu0 = time.process_time()
        with Ends("DBOS", lambda pending: returned.intersection(pending), interval) as ends:
            t0 = time.monotonic()
            if args.threads:
                with ThreadPoolExecutor(args.threads) as pool:
                    futures = []
                    for n in range(args.count):
                        pace(t0, n, args.rate or None)
                        started.append(time.monotonic())
                        ends.handed(f"{args.tag}-{n}", started[-1])
                        futures.append(pool.submit(one, args.tag, n))
                    ended = [f.result() for f in futures]
            else:
                for n in range(args.count):
                    pace(t0, n, args.rate or None)
                    started.append(time.monotonic())
                    ends.handed(f"{args.tag}-{n}", started[-1])
                    ended.append(one(args.tag, n))
            ends.wait(args.count, 600)
        result = {
            "cpu_seconds": time.process_time() - cpu0,
            "seconds": ends.last(t0) - t0,
            "latencies": ends.latencies(),
            # the call's own return, seen by no reader: the clock of earlier figures
            "recorded": [e - s for s, e in zip(started, ended, strict=True)],
        }
    finally:
        DBOS.destroy()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
