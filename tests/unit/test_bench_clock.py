"""The bench's reader: it asks about the longest waiting workflows, and sees every end."""

from __future__ import annotations

import threading

from bench.clock import ASKED, Ends


def test_the_reader_asks_about_the_longest_waiting_and_sees_every_end() -> None:
    ended: set[str] = set()
    asked: list[list[str]] = []
    lock = threading.Lock()

    def which(pending: list[str]) -> list[str]:
        with lock:
            asked.append(pending)
            return [key for key in pending if key in ended]

    keys = [f"w{n:04d}" for n in range(3 * ASKED)]
    with Ends("workflows", which, interval=0.001) as ends:
        for n, key in enumerate(keys):
            ends.handed(key, float(n))
        with lock:
            ended.update(keys)
        ends.wait(len(keys), timeout=30)

    assert sorted(ends.finished) == keys
    assert all(len(pending) <= ASKED for pending in asked)
    first_full = next(p for p in asked if len(p) == ASKED)
    assert first_full == keys[:ASKED]
