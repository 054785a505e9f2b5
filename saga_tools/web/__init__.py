"""The HTTP API and the web view of the saga store (``saga api``)."""
