"""Alembic migrations of the SQL store's schema (:mod:`dispatcher.store.schema`).

Applied in code by :func:`dispatcher.store.migrate.upgrade`; developers create a
new revision with ``alembic -c migrations/alembic.ini revision --autogenerate``.
"""
