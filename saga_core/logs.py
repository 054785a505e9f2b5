"""Log lines for people (text) or for collectors (JSON), chosen by ``SAGA_LOG_FORMAT``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

#: Record attributes carried into a JSON line where a log call gives them (``extra=``).
CONTEXT = ("saga_id", "step", "attempt", "operation", "key", "try")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the saga context."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


#: Celery's lines for each task received and each task ended. At INFO they cost a worker a
#: twentieth of its CPU (profiled); what a step did is in its saga's history, and what went
#: wrong is logged at WARNING or above. They show with ``SAGA_LOG_LEVEL=DEBUG`` (Celery's own
#: default level, WARNING, hides them too).
PER_TASK = ("celery.app.trace", "celery.worker.strategy")


def setup(level: str, fmt: str) -> None:
    """Route every log record of this process, Celery's included, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    per_task = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for name in PER_TASK:
        logging.getLogger(name).setLevel(per_task)
    logging.captureWarnings(True)  # Python warnings (Celery's among them) as log records
