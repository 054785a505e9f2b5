"""The short chaos campaign of the test suite, and its clean-up when interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from saga_core.config import Settings
from saga_core.processes import wait_for
from saga_tools.cluster import saga_command
from tests.helpers import clean_chaos_run

pytestmark = pytest.mark.processes


def processes_using(data_dir: Path) -> list[int]:
    """PIDs of live processes started with SAGA_DATA_DIR under ``data_dir``."""
    found = []
    needle = f"SAGA_DATA_DIR={data_dir}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(240)
def test_short_chaos_run_ends_with_a_clean_audit(settings: Settings) -> None:
    report = clean_chaos_run(
        settings.to_env(), "--orders", "200", "--kills", "10", "--kill-every", "0.7", "--seed", "7"
    )
    assert sum(report["kills"].values()) == 10
    assert sum(report["final_states"].values()) == 200
    assert processes_using(settings.data_dir) == []


@pytest.mark.any_broker
@pytest.mark.timeout(120)
def test_interrupted_chaos_leaves_no_process_behind(settings: Settings) -> None:
    output = settings.data_dir.parent / "chaos-output.log"  # beside its data dir: kept
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            saga_command("chaos", "--orders", "100000", "--rate", "20"),
            env={**os.environ, **settings.to_env(), "SAGA_LOG_LEVEL": "INFO"},
            stdout=sink,
            stderr=subprocess.STDOUT,
            # As from a terminal: a run started in the background (`cmd &`) inherits SIGINT
            # ignored, and Python then never turns it into KeyboardInterrupt.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        orchestrator_log = settings.data_dir / "chaos" / "logs" / "orchestrator.log"
        wait_for(
            lambda: orchestrator_log.exists() and "ready" in orchestrator_log.read_text(),
            60,
            "the campaign to be under way",
        )
        assert len(processes_using(settings.data_dir)) >= 5
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        print(output.read_text(errors="replace")[-6000:])  # shown by pytest only on failure
    wait_for(lambda: not processes_using(settings.data_dir), 10, "every child to be gone")
