"""Sagas written with the public API (``saga_app``), as a user of this project would."""
