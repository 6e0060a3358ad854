"""Schema migrations of the SQL store, applied in code with Alembic's Python API.

The Alembic scripts ship inside the package (``dispatcher/migrations``); nothing
depends on the current directory or an ``alembic.ini`` file. URLs are those of
:mod:`dispatcher.store.engine` (SQLite or PostgreSQL).

An upgrade runs in one transaction. On PostgreSQL it first takes an advisory
lock, so dispatcher instances starting together on one database migrate it once;
on SQLite the transaction starts with ``BEGIN IMMEDIATE`` for the same effect.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import sqlalchemy.exc as sa_exc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from dispatcher.store.engine import WRITE, make_engine, store_error

__all__ = [
    "MIGRATIONS_DIR",
    "current",
    "current_on",
    "downgrade",
    "head",
    "upgrade",
    "upgrade_engine",
]

#: The package directory holding ``env.py`` and ``versions/``.
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"
#: ``pg_advisory_xact_lock`` key serialising migrations (arbitrary, fixed).
_PG_LOCK_KEY: Final = 0x5044_4D49_4752  # "PDMIGR"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision of the shipped migrations."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None, "the migrations directory has no revision"
    return revision


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent).

    Raises:
        ConfigError: the URL is malformed or unsupported.
        StoreError: the database failed.
    """
    engine = make_engine(url)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Like :func:`upgrade`, on an engine made by :func:`~dispatcher.store.engine.make_engine`."""
    _migrate(engine, command.upgrade, revision, "schema upgrade")


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` back to ``revision`` (``"base"``: drop everything).

    Raises:
        ConfigError: the URL is malformed or unsupported.
        StoreError: the database failed.
    """
    engine = make_engine(url)
    try:
        _migrate(engine, command.downgrade, revision, "schema downgrade")
    finally:
        engine.dispose()


def _migrate(
    engine: Engine, step: Callable[[Config, str], None], revision: str, operation: str
) -> None:
    """Run an Alembic command in one locked transaction."""
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(**{WRITE: True})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                step(_config(conn), revision)
    except sa_exc.SQLAlchemyError as exc:
        raise store_error(exc, engine.url, operation) from exc


def current(url: str) -> str | None:
    """The database's revision, or ``None`` when it was never migrated.

    Raises:
        ConfigError: the URL is malformed or unsupported.
        StoreError: the database failed.
    """
    engine = make_engine(url)
    try:
        return current_on(engine)
    finally:
        engine.dispose()


def current_on(engine: Engine) -> str | None:
    """Like :func:`current`, on an existing engine."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa_exc.SQLAlchemyError as exc:
        raise store_error(exc, engine.url, "reading the schema revision") from exc
