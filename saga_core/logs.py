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
    logging.captureWarnings(True)  # Python warnings (Celery's among them) as log records
