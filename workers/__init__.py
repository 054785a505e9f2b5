"""The services: one module each, plus the step wrapper that makes Celery tasks of them."""

from workers import inventory, notification, payment, shipping
from workers.service import Service

SERVICES: dict[str, Service] = {
    s.name: s for s in (inventory.service, payment.service, shipping.service, notification.service)
}

__all__ = ["SERVICES", "Service"]
