"""The saga orchestrator: saga definitions as data, the engine that runs them, and its
process. It knows no saga of its own: the app gives it the definitions (``saga_app``), and
the Python API to submit and follow sagas is ``saga_app``'s."""
