"""Fault injection, a test and demo tool: never part of the product's contract.

Installed only in a process started with ``SAGA_FAULTS=1`` (``saga demo``, ``saga chaos``
and the tests set it), it attaches to the step wrapper and the engine through their hooks.
"""
