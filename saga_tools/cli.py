"""The ``saga`` command line. Exit status: 0 on success, 2 for bad input (reason on
stderr), 1 for anything else that went wrong."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import amqp.exceptions
import redis.exceptions

from saga_app.app import configured as app_configured
from saga_app.app import of as app_of
from saga_core import config, database, logs, processes
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.errors import (
    BusinessError,
    ConfigError,
    InvalidInput,
    SagaError,
    SagaNotFound,
    TransitionRefused,
)
from saga_faults import switch
from saga_store.models import Actor
from saga_tools.tokens import API_SCOPES, api_tokens

log = logging.getLogger("saga.api")

MAX_ORDER_BYTES = 1 << 20
EXIT_BAD_INPUT = 2


#: A broker that answers but refuses who we are or what we ask: Redis's ACL, RabbitMQ's users.
BROKER_REFUSED = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.NoPermissionError,
    amqp.exceptions.AccessRefused,
)


class BadInput(Exception):
    pass


SERVER_COMMANDS = {"orchestrator", "worker", "api"}


def _setup_logging(settings: Settings, command: str) -> None:
    # A one-shot command's output is its answer; its info lines would only bury it.
    level = settings.log_level if command in SERVER_COMMANDS else "WARNING"
    logs.setup(level, settings.log_format)


def _read_order(source: str) -> Any:
    try:
        if source == "-":
            raw = sys.stdin.buffer.read(MAX_ORDER_BYTES + 1)
        else:
            with open(source, "rb") as f:
                raw = f.read(MAX_ORDER_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {source}: {exc.strerror}") from None
    if len(raw) > MAX_ORDER_BYTES:
        raise BadInput(f"{source}: larger than {MAX_ORDER_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{source}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}") from None


def _print_saga(view: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view.to_dict(), indent=2))
        return
    from saga_tools import timeline

    print(timeline.headline(view))
    if view.error:
        print(f"  reason: {view.error}")
    for step in view.steps:
        detail = step.error or (json.dumps(step.output) if step.output is not None else "")
        if step.held_by:
            detail = f"held by {step.held_by}"
        print(f"  {step.name:<20} {step.state:<13} {detail}")


def cmd_orchestrator(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator import process
    from saga_faults import middleware

    app = app_of(settings)
    process.run(
        settings,
        app.definitions,
        retired=app.retired_definitions,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        middleware=middleware.install(settings, "orchestrator"),
    )
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from saga_core.broker import loopback_host
    from saga_tools.web.app import create_app

    tokens = api_tokens(settings)
    if not tokens and not loopback_host(args.host):
        raise ConfigError(
            f"refusing to serve the API on {args.host} without tokens: anyone who reaches it "
            "could place orders and read every saga. Set SAGA_API_TOKENS_FILE (`saga token`), "
            "or serve on 127.0.0.1"
        )
    if tokens:
        log.info(
            "API on %s:%d: %d token(s), each request needs one",
            args.host,
            args.port,
            len(tokens),
        )
    else:
        log.warning(
            "API on %s:%d WITHOUT tokens: anyone on this machine may place orders, read every "
            "saga and act as an operator (SAGA_API_TOKENS_FILE; docs/security.md)",
            args.host,
            args.port,
        )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,  # our logging (text or JSON), set up above
        access_log=settings.log_level == "DEBUG",
    )
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from saga_faults import middleware
    from workers import process

    if args.service != "all" and args.service not in settings.services:
        raise BadInput(f"no service {args.service!r}: the app's are {_services(settings)}, or all")
    pool = args.pool or process.default_pool(settings.broker_url)
    if pool == "solo" and args.concurrency != 1:
        raise BadInput(
            f"--concurrency {args.concurrency}: the solo pool runs one step at a time; "
            "use --pool prefork or --pool threads for more"
        )
    # Supervised whatever its pool: a step that kills the process (solo, threads), or a
    # worker that ends by itself (Celery does on an error it calls unrecoverable), is
    # started again; a prefork worker's main process replaces its pool children itself.
    if not args.supervised:
        from saga_tools.cluster import saga_command

        argv = saga_command(
            "worker", args.service, "--pool", pool, "--concurrency", str(args.concurrency)
        )
        # the child dies with its supervisor (SAGA_PARENT_PID, then die_with_parent)
        env = {**os.environ, "SAGA_PARENT_PID": str(os.getpid())}
        return processes.supervise([*argv, "--supervised"], env, f"the {args.service} worker")
    if args.supervised and settings.parent_pid:
        processes.die_with_parent(settings.parent_pid)
    app = app_of(settings)
    services = list(app.services) if args.service == "all" else [app.service(args.service)]
    process.run(
        settings,
        services,
        pool=pool,
        concurrency=args.concurrency,
        loglevel=settings.log_level,
        middleware=middleware.install(settings, "worker"),
    )
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    import saga_app

    order = _read_order(args.file)
    saga_id = saga_app.submit(order, settings=settings)
    view = (
        saga_app.wait(saga_id, settings=settings, timeout=args.timeout)
        if args.wait
        else saga_app.get_saga(saga_id, settings=settings)
    )
    if args.json:
        print(json.dumps(view.to_dict(), indent=2))
    elif args.wait:
        _print_saga(view, False)
    else:
        print(saga_id)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import saga_app

    _print_saga(saga_app.get_saga(args.saga_id, settings=settings), args.json)
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from saga_store import open_reader
    from saga_tools import timeline

    view, events, alerts = timeline.load(open_reader(settings.store()), args.saga_id)
    if args.json:
        print(json.dumps(timeline.to_dict(view, events, alerts), indent=2))
    else:
        print(timeline.render(view, events, alerts))
    return 0


def _services(settings: Settings) -> str:
    return ", ".join(settings.services)


def _operator() -> str:
    return f"{Actor.OPERATOR}:{getpass.getuser()}"


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from saga_app import client as api

    state = api.retry(args.saga_id, actor=_operator(), settings=settings)
    print(f"saga {args.saga_id}: {state}, its failed compensations sent again")
    return 0


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> int:
    from saga_app import client as api

    api.resolve(args.saga_id, args.note, actor=_operator(), settings=settings)
    print(f"saga {args.saga_id}: resolved; its alerts are closed")
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from saga_app import client as api

    state = api.cancel(args.saga_id, actor=_operator(), settings=settings)
    print(f"saga {args.saga_id}: {state}")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from saga_store import SagaState, open_reader, queries
    from saga_store.models import stored_name

    state = None
    if args.state:
        try:
            state = SagaState(args.state)
        except ValueError:
            raise BadInput(
                f"unknown state {args.state!r}; one of {', '.join(s.value for s in SagaState)}"
            ) from None
    rows = queries.list_sagas(open_reader(settings.store()), state, args.limit, args.saga)
    sagas = [
        {
            "id": r["id"],
            "saga": stored_name(r["definition"])[0],
            "state": r["state"],
            "created_at": r["created_at"],
            "updated_at": r["updated_at"],
            "error": r["error"],
        }
        for r in rows
    ]
    if args.json:
        print(json.dumps(sagas, indent=2))
    else:
        for s in sagas:
            print(
                f"{s['id']}  {s['saga']:<10} {s['state']:<13} {s['created_at']}  {s['error'] or ''}"
            )
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from saga_store import open_reader, queries

    alerts = queries.alerts(open_reader(settings.store()))
    if args.json:
        print(json.dumps([a.__dict__ for a in alerts], indent=2))
    else:
        for a in alerts:
            print(f"{a.created_at}  saga {a.saga_id}  {a.step}: {a.error}")
    return 0


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    from saga_store import open_reader, queries

    now = time.time()
    rows = [
        {
            "worker": r["name"],
            "pid": r["pid"],
            "services": r["services"].split(","),
            "holds": r["held"],
            "last_heard_s_ago": round(now - r["last_seen"], 1),
            # the liveness rule, as the sweeper applies it
            "alive": now - r["last_seen"] < settings.liveness_timeout,
        }
        for r in queries.workers(open_reader(settings.store()))
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for w in rows:
        state = "alive" if w["alive"] else "silent"
        print(
            f"{w['worker']} pid {w['pid']}  {','.join(w['services'])}  {state}, "
            f"heard {w['last_heard_s_ago']}s ago, holding {w['holds']}"
        )
    return 0


def cmd_ping(args: argparse.Namespace, settings: Settings) -> int:
    """A health check: 0 once whoever serves the queue answers, 1 otherwise."""
    from kombu.exceptions import KombuError

    from saga_core import ping
    from saga_core.celery_app import make_app

    if args.target not in (*settings.services, ORCHESTRATOR_QUEUE):
        raise BadInput(f"no queue {args.target!r}: {_services(settings)} or {ORCHESTRATOR_QUEUE}")
    queue = settings.queue(args.target)
    started = time.monotonic()
    try:
        pong = ping.ask(make_app(settings, "ping"), queue, args.timeout)
    except (TimeoutError, OSError, KombuError) as exc:
        print(f"saga: ping {args.target}: {exc}", file=sys.stderr)
        return 1
    took = (time.monotonic() - started) * 1000
    print(f"pong from {pong.responder} (pid {pong.pid}) in {took:.0f} ms")
    return 0


def cmd_stock(args: argparse.Namespace, settings: Settings) -> int:
    from order_app import inventory

    db = inventory.service.database(settings.service_database("inventory"))
    if args.action == "set":
        if len(args.rest) != 2:
            raise BadInput("usage: saga stock set SKU QUANTITY")
        sku, raw = args.rest
        try:
            quantity = int(raw)
        except ValueError:
            raise BadInput(f"QUANTITY must be a whole number, got {raw!r}") from None
        inventory.set_stock(db, sku, quantity)
    elif args.action == "seed":
        # for a stack's first start: stock it once, never reset a running shop's counts
        known = {r["sku"] for r in inventory.list_stock(db)}
        for sku, quantity in _seed_pairs(args.rest).items():
            if sku not in known:
                inventory.set_stock(db, sku, quantity)
    elif args.action is not None:
        raise BadInput(
            f"unknown stock command {args.action!r}; try 'saga stock set SKU QUANTITY' "
            "or 'saga stock seed SKU=QUANTITY ...'"
        )
    rows = inventory.list_stock(db)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'SKU':<16} {'ON HAND':>8} {'RESERVED':>9} {'AVAILABLE':>10}")
        for r in rows:
            print(f"{r['sku']:<16} {r['on_hand']:>8} {r['reserved']:>9} {r['available']:>10}")
    return 0


def _seed_pairs(words: list[str]) -> dict[str, int]:
    pairs: dict[str, int] = {}
    for word in words:
        sku, _, raw = word.partition("=")
        if not sku or not raw.isdigit():
            raise BadInput(f"expected SKU=QUANTITY (a whole number), got {word!r}")
        pairs[sku] = int(raw)
    if not pairs:
        raise BadInput("usage: saga stock seed SKU=QUANTITY [SKU=QUANTITY ...]")
    return pairs


def cmd_faults(args: argparse.Namespace, settings: Settings) -> int:
    from saga_faults.plans import FaultPlans

    if not switch.is_on(settings):
        raise BadInput(
            "fault plans are a test and demo tool: they need SAGA_FAULTS=1, here and in "
            "the workers and the orchestrator that are to obey them"
        )
    plans = FaultPlans(settings.data_dir, app_of(settings).operations)
    if args.plan is not None:
        try:
            plans.add(args.order_id, _read_order(args.plan))
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    print(json.dumps(plans.get(args.order_id), indent=2))
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from saga_tools import audit

    report = audit.audit(settings, settle_seconds=args.settle)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        states = ", ".join(f"{n} {s}" for s, n in sorted(report.sagas_by_state.items()))
        print(f"sagas: {states or 'none'}")
        for v in report.violations:
            print(
                f"VIOLATION [{v.check}] {('saga ' + v.saga_id + ': ') if v.saga_id else ''}"
                f"{v.message}"
            )
        print("audit clean" if report.ok else f"{len(report.violations)} violation(s)")
    return 0 if report.ok else 1


def cmd_dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    """The messages the system refused unread (``saga_core.dead_letters``), newest first;
    ``--purge`` empties the place."""
    from saga_core import dead_letters

    dead = dead_letters.for_system(settings)
    try:
        if args.purge:
            print(f"{dead.purge()} dead letter(s) purged")
            return 0
        letters = dead.list(args.limit)
    finally:
        dead.close()
    if args.json:
        print(json.dumps([d.to_dict() for d in letters], indent=2))
        return 0
    for d in letters:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at))
        print(f"{at}  {d.queue:<24} {d.size:>8} B  {d.by:<24} {d.reason}")
    print(
        f"{len(letters)} dead letter(s)"
        + (f" (the newest {args.limit})" if len(letters) >= args.limit else "")
    )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    from saga_tools import chaos
    from workers import process

    opts = chaos.Options(
        orders=args.orders,
        rate=args.rate,
        kill_every=args.kill_every,
        kills=args.kills,
        seed=args.seed,
        transient_rate=args.transient_rate,
        business_rate=args.business_rate,
        compensation_failure_rate=args.compensation_failure_rate,
        own_redis=args.own_redis,
        restart_redis=args.restart_redis,
        step_timeout=args.step_timeout,
        settle_timeout=args.settle_timeout,
        database=args.database,
        orchestrators=args.orchestrators,
        replicas=args.replicas,
        pool=args.pool or process.default_pool(settings.broker_url),
        saga=args.saga,
    )
    saga_name = app_of(settings).saga(args.saga).name
    where = database.redact(opts.database) if opts.database else "SQLite"
    print(
        f"chaos: {opts.orders} {saga_name} sagas at {opts.rate}/s, a kill every "
        f"~{opts.kill_every}s, "
        f"seed {opts.seed}; {opts.orchestrators} orchestrator(s), {opts.replicas} {opts.pool} "
        f"worker(s) per service, on {where}; messages signed ("
        + ("SAGA_KEYS_FILE's keys)" if settings.keys else "keys made for this run)"),
        flush=True,
    )
    result = chaos.run(settings, opts)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        states = ", ".join(f"{n} {s}" for s, n in sorted(result.final_states.items()))
        kills = ", ".join(f"{n} {k}" for k, n in sorted(result.kills.items())) or "none"
        print(f"sagas:              {states}")
        print(f"kills:              {kills}")
        print(f"exited by itself:   {result.exits} (started again)")
        print(f"re-dispatches:      {result.redispatches}")
        print(f"duplicate outcomes: {result.duplicate_outcomes} ignored")
        print(f"submit errors:      {result.submit_errors}")
        print(
            f"submitting took     {result.submit_seconds:.1f}s; settling then took "
            f"{result.settle_seconds:.1f}s"
        )
        print(f"unsettled:          {result.unsettled}")
        for v in result.violations:
            print(f"VIOLATION [{v.check}] {v.saga_id or ''} {v.message}")
        print(f"violations:         {len(result.violations)}")
    return 0 if result.ok else 1


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """A new set of signing keys as a keys file: every identity's, or one new key added in
    front of the configured ones (``--rotate``: it signs from now on, the old one is still
    accepted)."""
    from saga_core.signing import new_keys

    fresh = new_keys(settings.identities)
    if args.rotate:
        if not settings.keys:
            raise BadInput("--rotate adds to the configured keys, and none are (SAGA_KEYS_FILE)")
        keys = {
            name: [fresh[name][0], *settings.keys.get(name, ())][:2] for name in settings.identities
        }
    else:
        keys = {name: list(ks) for name, ks in fresh.items()}
    text = json.dumps(keys, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    try:
        # created readable by its owner only: it holds every service's key
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BadInput(f"{args.out} exists: keys are not overwritten") from None
    except OSError as exc:
        raise BadInput(f"cannot write {args.out}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    names = ", ".join(settings.identities)
    print(f"keys for {names} written to {args.out}; SAGA_KEYS_FILE={args.out}")
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    """A new API token: its SHA-256 added to the tokens file under ``name`` with ``scopes``,
    the token itself printed once (the file never holds it)."""
    import hashlib
    import secrets

    from saga_tools.tokens import TOKEN_NAME, read_api_tokens, tokens_file

    if not TOKEN_NAME.fullmatch(args.name):
        raise BadInput(f"token name {args.name!r:.70}: 1 to 64 of A-Z a-z 0-9 _ . @ -")
    path = args.file or tokens_file(settings)
    if not path:
        raise BadInput("say which tokens file to add to: --file, or SAGA_API_TOKENS_FILE")
    existing = read_api_tokens(path) if os.path.exists(path) else {}
    if args.name in existing:
        raise BadInput(f"{path} has a token named {args.name!r} already")
    token = "saga_" + secrets.token_urlsafe(32)
    entries = {
        name: {"sha256": t.sha256, "scopes": sorted(t.scopes)} for name, t in existing.items()
    }
    entries[args.name] = {
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
        "scopes": sorted(set(args.scope)),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(entries, indent=2) + "\n")
    print(token)
    print(
        f"token {args.name!r} ({', '.join(sorted(set(args.scope)))}) added to {path}; "
        "it is shown this once",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from saga_tools import demo

    return demo.run(
        settings,
        orders=args.orders,
        transient=args.transient_rate,
        business=args.business_rate,
        timeout=args.timeout,
        rate=args.rate,
        kill_every=args.kill_every,
        seed=args.seed,
        saga=args.saga,
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("order-saga")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="saga", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument(
        "--app",
        "-A",
        help="the app to run, as package.module:app (SAGA_APP; the order saga by default)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    o = sub.add_parser("orchestrator", help="run the orchestrator (outcomes, recovery, sweeper)")
    o.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    o.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address the metrics listen on (0.0.0.0 in a container)",
    )

    a = sub.add_parser("api", help="serve the HTTP API and the web view")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8000)

    w = sub.add_parser("worker", help="run a service worker")
    w.add_argument("service", help="one of the app's services, or all")
    w.add_argument(
        "--pool",
        default=None,
        choices=["solo", "prefork", "threads"],
        help="Celery's pool; by default solo on Redis (each step in the worker's own "
        "process, which `saga worker` starts again if a step kills it) and prefork on "
        "RabbitMQ (each step in a pool child); see docs/benchmarks.md",
    )
    w.add_argument("--concurrency", type=_positive, default=1)
    w.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)

    s = sub.add_parser("submit", help="submit an order (a JSON file, or - for stdin)")
    s.add_argument("file")
    s.add_argument("--wait", action="store_true", help="block until the saga ends")
    s.add_argument("--timeout", type=float, default=None, help="with --wait: give up after")
    s.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="show one saga and its steps")
    st.add_argument("saga_id")
    st.add_argument("--json", action="store_true")

    sh = sub.add_parser("show", help="one saga's timeline: attempts, outcomes, actions")
    sh.add_argument("saga_id")
    sh.add_argument("--json", action="store_true")

    rt = sub.add_parser("retry", help="run a failed saga's given-up compensations again")
    rt.add_argument("saga_id")
    rv = sub.add_parser("resolve", help="record that a failed saga was settled by hand")
    rv.add_argument("saga_id")
    rv.add_argument("--note", required=True, help="what was done")
    cn = sub.add_parser("cancel", help="stop a running saga and compensate what took effect")
    cn.add_argument("saga_id")

    ls = sub.add_parser("list", help="list sagas, newest first")
    ls.add_argument("--state")
    ls.add_argument("--saga", help="of the saga by this name only")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")

    al = sub.add_parser("alerts", help="list compensations that failed for good")
    al.add_argument("--json", action="store_true")

    wk = sub.add_parser("workers", help="workers heard from: alive or silent, what they hold")
    wk.add_argument("--json", action="store_true")

    pg = sub.add_parser(
        "ping", help="health check: ping a service's workers or the orchestrator through its queue"
    )
    pg.add_argument("target", help="one of the app's services, or orchestrator")
    pg.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")

    sk = sub.add_parser(
        "stock",
        help="list stock; 'stock set SKU QUANTITY'; 'stock seed SKU=QUANTITY ...' stocks only "
        "the SKUs not stocked yet (a stack's first start)",
    )
    sk.add_argument("action", nargs="?", choices=["set", "seed"])
    sk.add_argument("rest", nargs="*")
    sk.add_argument("--json", action="store_true")

    fp = sub.add_parser(
        "faults",
        help="show, or set from a JSON file (- for stdin), the fault plan of an order "
        "(a test and demo tool: needs SAGA_FAULTS=1)",
    )
    fp.add_argument("order_id")
    fp.add_argument("plan", nargs="?")

    au = sub.add_parser("audit", help="cross-check the saga store against every service")
    au.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="seconds after which a saga must have ended (default 60)",
    )
    au.add_argument("--json", action="store_true")

    dl = sub.add_parser(
        "dead-letters", help="list the messages refused unread (--purge empties the list)"
    )
    dl.add_argument("--limit", type=_positive, default=100)
    dl.add_argument("--purge", action="store_true", help="remove every dead letter")
    dl.add_argument("--json", action="store_true")

    c = sub.add_parser("chaos", help="a kill-anything campaign, then the audit")
    c.add_argument("--saga", default=None, help="the app's saga to run (default: its first)")
    c.add_argument("--orders", type=int, default=1000, help="sagas to submit")
    c.add_argument("--rate", type=float, default=25.0, help="sagas submitted per second")
    c.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between kills")
    c.add_argument("--kills", type=int, default=None, help="at most this many kills")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--transient-rate", type=float, default=0.05)
    c.add_argument("--business-rate", type=float, default=0.02)
    c.add_argument("--compensation-failure-rate", type=float, default=0.02)
    c.add_argument("--own-redis", action="store_true", help="run on a redis-server of its own")
    c.add_argument(
        "--restart-redis",
        action="store_true",
        help="with --own-redis: kill and restart it once mid-run",
    )
    c.add_argument("--step-timeout", type=float, default=5.0)
    c.add_argument("--settle-timeout", type=float, default=300.0)
    c.add_argument(
        "--database",
        default="",
        metavar="URL",
        help="a postgresql:// server: the run's databases in a database of its own there "
        "(dropped after); default: SQLite files",
    )
    c.add_argument("--orchestrators", type=_positive, default=1, help="orchestrator processes")
    c.add_argument("--replicas", type=_positive, default=1, help="worker processes per service")
    c.add_argument(
        "--pool",
        default=None,
        choices=["solo", "prefork"],
        help="the workers' Celery pool (as `saga worker --pool`, whose default it takes; "
        "the kills of a pool child hit the process that runs the steps: a solo worker's "
        "Celery process, a prefork worker's pool child)",
    )
    c.add_argument("--json", action="store_true")

    k = sub.add_parser("keys", help="make message signing keys (docs/security.md)")
    k.add_argument("out", help="the keys file to create (- for stdout)")
    k.add_argument(
        "--rotate",
        action="store_true",
        help="a new key first for each identity, the configured one kept second",
    )

    tk = sub.add_parser("token", help="make an HTTP API token (docs/security.md)")
    tk.add_argument("name", help="who holds it: recorded as the actor of what it does")
    tk.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=API_SCOPES,
        help="what it may do (repeat for several)",
    )
    tk.add_argument("--file", help="the tokens file (default: SAGA_API_TOKENS_FILE)")

    d = sub.add_parser("demo", help="start everything, run a batch of orders, print outcomes")
    d.add_argument("--saga", default=None, help="the app's saga to run (default: its first)")
    d.add_argument("--orders", type=int, default=24, help="sagas to submit")
    d.add_argument("--transient-rate", type=float, default=0.1)
    d.add_argument("--business-rate", type=float, default=0.03)
    d.add_argument("--timeout", type=float, default=180.0)
    d.add_argument("--rate", type=float, default=8.0, help="sagas submitted per second")
    d.add_argument(
        "--kill-every",
        type=float,
        metavar="SECONDS",
        help="SIGKILL a random worker (now and then the orchestrator) this often, and restart it",
    )
    d.add_argument("--seed", type=int, default=7)
    return p


COMMANDS = {
    "orchestrator": cmd_orchestrator,
    "worker": cmd_worker,
    "api": cmd_api,
    "submit": cmd_submit,
    "status": cmd_status,
    "show": cmd_show,
    "retry": cmd_retry,
    "resolve": cmd_resolve,
    "cancel": cmd_cancel,
    "list": cmd_list,
    "alerts": cmd_alerts,
    "workers": cmd_workers,
    "ping": cmd_ping,
    "stock": cmd_stock,
    "faults": cmd_faults,
    "audit": cmd_audit,
    "dead-letters": cmd_dead_letters,
    "chaos": cmd_chaos,
    "keys": cmd_keys,
    "token": cmd_token,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.app:
        # as SAGA_APP: for every process this one starts too (a supervised worker, a cluster)
        os.environ["SAGA_APP"] = args.app
    try:
        settings = config.load()
        # the settings of the layers above, checked at start like the rest: `saga token`
        # makes the tokens file that SAGA_API_TOKENS_FILE may name already
        api_tokens(settings, may_be_missing=args.command == "token")
        switch.is_on(settings)
        settings = app_configured(settings)  # its app's services: queues, identities
        _setup_logging(settings, args.command)
        if settings.parent_pid and args.command in SERVER_COMMANDS:
            processes.exit_with_parent(settings.parent_pid)
        return COMMANDS[args.command](args, settings)
    except (BadInput, InvalidInput, SagaNotFound, BusinessError, TransitionRefused) as exc:
        print(f"saga: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConfigError as exc:
        print(f"saga: configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SagaError, TimeoutError) as exc:
        print(f"saga: {exc}", file=sys.stderr)
        return 1
    except BROKER_REFUSED as exc:
        print(
            f"saga: the broker refused this process ({exc}): check the user and password in "
            "SAGA_BROKER_URL, and what the broker allows that user",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
