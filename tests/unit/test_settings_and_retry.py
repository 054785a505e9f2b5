"""Configuration from the environment, and the backoff policy."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from saga_core import config, logs
from saga_core.errors import ConfigError
from saga_core.retry import RetryPolicy
from saga_faults import switch


def test_defaults() -> None:
    s = config.load({})
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.data_dir == Path("./var")
    assert s.queue("payment") == "payment"
    assert s.task_events is False  # two publishes less per step; the compose file turns them on


def test_settings_round_trip_through_the_environment() -> None:
    s = config.load(
        {
            "SAGA_QUEUE_PREFIX": "x.",
            "SAGA_STEP_TIMEOUT": "2.5",
            "SAGA_FAULTS": "1",
            "SAGA_FAILURE_RATES": '{"*": {"transient": 0.1}}',
        }
    )
    assert config.load(s.to_env()) == s
    assert s.queue("payment") == "x.payment"
    assert switch.is_on(s) and switch.failure_rates(s)["*"].transient == 0.1


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SAGA_STEP_TIMEOUT": "soon"}, "SAGA_STEP_TIMEOUT"),
        ({"SAGA_MAX_DISPATCHES": "0"}, "SAGA_MAX_DISPATCHES"),
        ({"SAGA_FAULTS": "1", "SAGA_FAILURE_RATES": "{"}, "SAGA_FAILURE_RATES"),
        # random failures are fault injection: never without the switch
        ({"SAGA_FAILURE_RATES": '{"*": {"transient": 0.1}}'}, "SAGA_FAULTS=1"),
        ({"SAGA_FAILURE_RATES": '{"*": {"transient": 2}}'}, "SAGA_FAILURE_RATES"),
    ],
)
def test_bad_setting_is_named(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        # as every process reads its settings: the switch of faults is the faults' own
        switch.is_on(config.load(env))


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0, jitter=False)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_stays_within_half_and_full_delay() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=100.0)
    rng = random.Random(1)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_celerys_line_per_task_shows_at_debug_only(
    level: str, shown: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    try:
        logs.setup(level, "text")
        logging.getLogger("celery.app.trace").info("Task charge_payment[1] succeeded")
        logging.getLogger("celery.app.trace").error("Task charge_payment[2] raised")
        logging.getLogger("saga.worker").info("charge_payment refused: declined")
        err = capsys.readouterr().err
    finally:
        root.handlers[:], root.level = handlers, root_level
        for name in logs.PER_TASK:
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert ("charge_payment[1] succeeded" in err) is shown
    assert "charge_payment[2] raised" in err and "refused: declined" in err


def test_a_supervised_child_that_exits_by_itself_is_started_again(tmp_path: Path) -> None:
    import sys

    from saga_core import processes

    # Given a child that exits by itself, with status 0 then 1, and on its third start
    # ends as a child that cannot run as configured does
    runs = tmp_path / "runs"
    script = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(runs)!r})\n"
        "n = len(p.read_text()) if p.exists() else 0\n"
        "p.write_text('x' * (n + 1))\n"
        "sys.exit([0, 1, 2][n])\n"
    )
    # When it is supervised
    code = processes.supervise([sys.executable, "-c", script], {}, "the test child")
    # Then it was started again after each exit but the last, whose status is returned
    assert runs.read_text() == "xxx"
    assert code == processes.EXIT_CONFIGURATION


@pytest.mark.parametrize(
    ("name", "raw", "problem"),
    [
        ("REPLAY_WINDOW", "inf", "SAGA_REPLAY_WINDOW must be a finite number, got 'inf'"),
        ("REPLAY_WINDOW", "nan", "SAGA_REPLAY_WINDOW must be a finite number, got 'nan'"),
        ("MAX_DISPATCHES", "inf", "SAGA_MAX_DISPATCHES must be a finite number"),
        ("STEP_TIMEOUT", "-inf", "SAGA_STEP_TIMEOUT must be a finite number"),
        ("LOG_LEVEL", "BOGUS", "SAGA_LOG_LEVEL must be one of DEBUG, INFO, WARNING"),
    ],
)
def test_a_setting_out_of_its_words_is_refused_naming_it(name: str, raw: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config.load({f"SAGA_{name}": raw})


def test_log_level_is_read_in_any_case() -> None:
    assert config.load({"SAGA_LOG_LEVEL": "debug"}).log_level == "DEBUG"
