"""The foundation every other package stands on: settings, errors, the messages that cross
the broker, retry policy, the Celery app, the broker seen from outside, SQLite plumbing,
logs and the consumer watchdog. It imports nothing of this project's above it."""
