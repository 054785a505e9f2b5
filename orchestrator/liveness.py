"""Where a step's message could still be waiting: the half of liveness that heartbeats
cannot tell.

A step that no worker reports holding is either lost (its worker died with its message, or
the message never arrived) or still waiting in its queue behind others. Only the second is
fine, and a waiting step is not late: its clock starts when a worker takes it. Queues are
first in, first out, so a queue seen empty after a message entered it no longer holds that
message: a worker took it, and will report it within a heartbeat, or the message is gone.
So the sweeper looks at each service queue every sweep and keeps the times it saw each one
empty; a step is judged lost only where its queue was seen empty well after the step was
last heard of, and long enough ago for a worker that took it to have said so. A queue that
is busy but not backlogged (empty now and then) still shows such moments; one that never
empties (a backlog) delays the judgement until it drains, and sends nothing twice meanwhile.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

#: Messages waiting on a service's queue (by service name); None where it cannot be told.
QueueDepth = Callable[[str], "int | None"]

#: How long the times a queue was seen empty are kept: a step last heard of before the
#: oldest kept is judged by the kept ones, all of them later than it.
KEEP_FOR = 600.0


class QueueWatch:
    def __init__(self, depth: QueueDepth | None):
        """``depth`` None: no broker to look at (a client's engine, a unit test), and every
        queue counts as seen empty at any time."""
        self.depth = depth
        # per service, the times its queue was seen empty, in order (so bisectable)
        self._empty: dict[str, list[float]] = {}

    def look(self, services: Iterable[str], now: float) -> None:
        """Look at each service's queue once."""
        if self.depth is None:
            return
        for service in services:
            seen = self._empty.setdefault(service, [])
            if self.depth(service) == 0:
                seen.append(now)
            del seen[: bisect.bisect_left(seen, now - KEEP_FOR)]

    def seen_empty(self, service: str, after: float, before: float) -> bool:
        """Whether ``service``'s queue was seen empty at some time in ``[after, before]``."""
        if self.depth is None:
            return after <= before
        seen = self._empty.get(service, [])
        i = bisect.bisect_left(seen, after)
        return i < len(seen) and seen[i] <= before
