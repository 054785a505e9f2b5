"""The orchestrator app for ``celery -A orchestrator.app worker -Q orchestrator -P solo``."""

from orchestrator.process import build
from saga import config

app, engine = build(config.load())
