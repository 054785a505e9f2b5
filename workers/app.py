"""The worker app for ``celery -A workers.app worker -Q inventory`` (the Celery way)."""

from saga_core import config
from workers.process import build

app = build(config.load())
