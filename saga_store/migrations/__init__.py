"""The saga store's migrations (Alembic): one source for SQLite and PostgreSQL.

Revisions 0001-0004 are the schema versions this store had under ``PRAGMA user_version``
(1-4), written again as Alembic operations; a store file of such a version is stamped at
the matching revision before it is upgraded (``saga_store.schema.migrate``).
"""
