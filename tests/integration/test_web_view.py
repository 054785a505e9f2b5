"""The web view in a real browser: Debian's headless Chromium against a running system."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from saga_store import SagaState
from tests.conftest import unavailable
from tests.helpers import make_order
from tests.integration.conftest import System
from tests.integration.test_http_api import Api, api  # noqa: F401 - the fixture

pytestmark = pytest.mark.processes

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # root on the test machines
            "--disable-gpu",
            "--window-size=1200,1000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.any_broker
def test_the_page_shows_a_compensated_sagas_timeline(api: Api, system: System) -> None:  # noqa: F811
    if CHROMIUM is None:
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    saga_id = api.post_order(make_order("W-1", card_number="4000000000000002")).body["saga_id"]
    assert system.wait(saga_id).state is SagaState.COMPENSATED

    index = browse(api.base + "/?state=compensated", "--dump-dom")
    assert index.returncode == 0, index.stderr[-2000:]
    assert saga_id in index.stdout and "compensated (1)" in index.stdout

    page = browse(f"{api.base}/ui/sagas/{saga_id}", "--dump-dom")
    assert page.returncode == 0, page.stderr[-2000:]
    dom = page.stdout
    for text in (
        "order W-1",
        "compensated",
        "charge_payment action #1 refused",
        "card declined",
        "reserve_inventory compensation #1 succeeded",
        "saga compensated",
    ):
        assert text in dom, text
    assert 'http-equiv="refresh"' in dom  # it refreshes itself

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "saga-compensated.png"
    shot.unlink(missing_ok=True)
    taken = browse(f"{api.base}/ui/sagas/{saga_id}", f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000
