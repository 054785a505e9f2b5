"""The tools that use everything: the ``saga`` command line, the demo, the chaos campaign,
the audit, a saga's timeline, a whole system as child processes, and the HTTP API with its
web view (``saga_tools.web``)."""
