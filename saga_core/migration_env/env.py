"""Alembic's environment, shared by every migration of the project: run on the connection
``saga_core.migrations`` hands over."""

from alembic import context

from saga_core.migrations import CONNECTION

connection = context.config.attributes[CONNECTION]
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
