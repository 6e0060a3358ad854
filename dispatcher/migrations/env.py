"""Alembic environment for the dispatcher's SQL store.

Two ways in:

* :mod:`dispatcher.store.migrate` passes an open connection (already inside a
  transaction, holding the migration lock) as ``config.attributes["connection"]``;
* the ``alembic`` command line (``alembic -c migrations/alembic.ini ...``) gives a
  URL with ``-x url=...`` or the ``sqlalchemy.url`` option; the engine is built by
  :func:`dispatcher.store.engine.make_engine` so SQLite gets the same settings.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from dispatcher.store.engine import make_engine
from dispatcher.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database with -x url=... or sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


_main()
