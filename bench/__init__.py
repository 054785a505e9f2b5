"""Benchmarks: the saga orchestrator against a bare Celery chain of the same steps."""
