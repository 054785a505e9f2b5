"""Shared plumbing of the order saga system: configuration, errors, the Celery app and the CLI."""
