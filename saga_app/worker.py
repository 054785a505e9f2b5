"""The worker app of every service of the app ``SAGA_APP`` names, the Celery way:
``celery -A saga_app.worker worker -Q inventory``, ``celery -A saga_app.worker flower``."""

from saga_app.app import configured, of
from saga_core import config
from workers.process import build

settings = configured(config.load())
app = build(settings, of(settings).services)
