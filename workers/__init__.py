"""The services: one module each, plus the step wrapper that makes Celery tasks of them."""

from workers import inventory, notification, payment, shipping
from workers.service import Service

SERVICES: dict[str, Service] = {
    s.name: s for s in (inventory.service, payment.service, shipping.service, notification.service)
}
#: Each operation (action or compensation) and the service that runs it.
OPERATIONS: dict[str, Service] = {op: s for s in SERVICES.values() for op in s.operations}

__all__ = ["OPERATIONS", "SERVICES", "Service"]
