"""The service side: the step wrapper that makes Celery tasks of a service's operations,
the idempotency ledger, leases and heartbeats. Which services exist is the app's to say
(``saga_app``)."""

from workers.service import Service

__all__ = ["Service"]
