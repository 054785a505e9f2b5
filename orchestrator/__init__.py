"""The saga orchestrator: saga definitions, the engine that runs them, and its process.

The public Python API::

    import orchestrator
    saga_id = orchestrator.run(order)           # returns once the saga has ended
    saga_id = orchestrator.submit(order)        # returns at once
    view = orchestrator.get_saga(saga_id)       # view.state is a SagaState
"""

from orchestrator.api import get_saga, run, submit, wait
from orchestrator.order_saga import InvalidOrder
from saga_core.errors import InvalidInput, SagaError, SagaNotFound
from saga_store.models import SagaState, SagaView, StepState, StepView

__all__ = [
    "InvalidInput",
    "InvalidOrder",
    "SagaError",
    "SagaNotFound",
    "SagaState",
    "SagaView",
    "StepState",
    "StepView",
    "get_saga",
    "run",
    "submit",
    "wait",
]
