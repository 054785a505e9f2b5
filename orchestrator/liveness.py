"""Which service queues have stood empty: the half of liveness that heartbeats cannot tell.

A step that nothing has been heard of for a while is either lost (its worker died with its
message, or the message never arrived) or still waiting in its queue behind others. Only
the second is fine, and a waiting step is not late: its clock starts when a worker takes
it. So the sweeper looks at each service queue every sweep, and judges a step lost only
where its queue has been seen empty for a whole liveness timeout, look after look: then
the step's message is in no queue, and no live worker reports holding it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

#: Messages waiting on a service's queue (by service name); None where it cannot be told.
QueueDepth = Callable[[str], "int | None"]


class QueueWatch:
    def __init__(self, depth: QueueDepth | None, window: float):
        """``depth`` None: no broker to look at (a client's engine, a unit test), and
        every queue counts as empty."""
        self.depth, self.window = depth, window
        self._empty_since: dict[str, float | None] = {}
        self._looked_at: dict[str, float] = {}

    def look(self, services: Iterable[str], now: float) -> None:
        """Look at each service's queue once."""
        if self.depth is None:
            return
        for service in services:
            waiting = self.depth(service)
            before = self._looked_at.get(service)
            self._looked_at[service] = now
            if waiting is None or waiting > 0:
                self._empty_since[service] = None
            elif (
                self._empty_since.get(service) is None
                or before is None
                or now - before > self.window  # not looked at for a while: start again
            ):
                self._empty_since[service] = now

    def quiet(self, service: str, now: float) -> bool:
        """Whether ``service``'s queue has been seen empty, look after look, for a whole
        window."""
        if self.depth is None:
            return True
        since = self._empty_since.get(service)
        return since is not None and since <= now - self.window
