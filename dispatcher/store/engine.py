"""SQLAlchemy engines for the SQL store, and the translation of SQLAlchemy errors.

Supported URLs (SQLAlchemy syntax):

* ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: the embedded
  default. The parent directory is created. Connections use WAL journaling,
  ``synchronous=NORMAL``, a 30 s busy timeout and no foreign-key enforcement, and
  may be used from any thread. Statements autocommit; a connection given the
  :data:`WRITE` execution option runs one ``BEGIN IMMEDIATE`` transaction instead
  (the migrations), so that concurrent writers queue on the busy timeout.
* ``sqlite://`` (in memory): one connection shared by every thread; for
  single-threaded tests only.
* ``postgresql+psycopg://user:password@host:port/dbname``: the production store
  (psycopg 3), a pool of 10 connections by default (+20 overflow). A pooled connection idle
  for more than 2 s is pinged before use; busy connections are not (a ping on
  every checkout costs a round trip per store call, about a quarter of the
  throughput). A connection that died while busy fails one statement, after which
  the whole pool is replaced; the SQL store retries reads transparently.

Every ``sqlalchemy.exc`` error is translated by :func:`store_error`; messages never
contain the password.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import sqlalchemy.exc as sa_exc
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from dispatcher.store._codec import dumps
from pdcommon.errors import ConfigError, StoreError

__all__ = [
    "PG_CONNECT_TIMEOUT",
    "PG_IDLE_PING_SECONDS",
    "PG_MAX_OVERFLOW",
    "PG_POOL_SIZE",
    "SQLITE_BUSY_TIMEOUT",
    "WRITE",
    "make_engine",
    "parse_url",
    "safe_url",
    "store_error",
]

#: Seconds a SQLite writer waits for the database lock before failing.
SQLITE_BUSY_TIMEOUT: Final = 30.0
#: PostgreSQL pool: enough for the default 8 RPC workers plus the singletons (the
#: daemon sizes it from ``rpc_workers``: an overflow connection is opened per use).
PG_POOL_SIZE: Final = 10
PG_MAX_OVERFLOW: Final = 20
#: A pooled PostgreSQL connection idle for longer than this is pinged before use.
PG_IDLE_PING_SECONDS: Final = 2.0
#: Seconds to wait for a PostgreSQL connection to open.
PG_CONNECT_TIMEOUT: Final = 10
#: Execution option marking a connection that will write (``BEGIN IMMEDIATE`` on SQLite).
WRITE: Final = "pd_write"


def parse_url(url: str | URL) -> URL:
    """Parse a SQLAlchemy URL.

    Raises:
        ConfigError: the URL is malformed or names an unsupported backend.
    """
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise ConfigError(
            "invalid database URL (expected sqlite:///... or postgresql+psycopg://...)"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
        )
    return parsed


def safe_url(url: URL) -> str:
    """The URL with its password masked, for messages and logs."""
    return url.render_as_string(hide_password=True)


def make_engine(
    url: str | URL, *, pool_size: int = PG_POOL_SIZE, autocommit: bool = False
) -> Engine:
    """An engine configured for the dispatcher; see the module docstring.

    Args:
        url: the database URL.
        pool_size: PostgreSQL only: connections kept open (one per thread that
            uses the store at once; overflow connections are closed after each use).
        autocommit: PostgreSQL only: every connection of the pool is in autocommit
            mode (``begin()`` then starts no transaction). Cheaper than switching a
            transactional engine's connections with ``execution_options``, which
            sets and resets the mode on every checkout (~70 us per store call).

    Raises:
        ConfigError: the URL is malformed, its driver is not installed, or the
            directory of a SQLite database cannot be created.
    """
    parsed = parse_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return _postgres_engine(parsed, pool_size, autocommit)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot use database {safe_url(parsed)}: {reason}") from None


def _postgres_engine(url: URL, pool_size: int, autocommit: bool) -> Engine:
    engine = create_engine(
        url,
        json_serializer=dumps,
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
        pool_size=pool_size,
        max_overflow=PG_MAX_OVERFLOW,
        connect_args={
            "connect_timeout": PG_CONNECT_TIMEOUT,
            "application_name": "process-dispatcher",
        },
    )

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PG_IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out another (up to 3 times).
            raise sa_exc.DisconnectionError(f"idle connection is dead: {exc}") from exc

    return engine


_IDLE_SINCE: Final = "pd_idle_since"


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url.query)


def _sqlite_engine(url: URL) -> Engine:
    memory = _is_memory(url)
    if not memory and url.database and not url.database.startswith("file:"):
        directory = Path(url.database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = (
                f"{directory} is not a directory"
                if isinstance(exc, FileExistsError)
                else f"cannot create {directory}: {exc.strerror}"
            )
            raise ConfigError(f"cannot use database {safe_url(url)}: {reason}") from None
    kwargs: dict[str, Any] = {
        "json_serializer": dumps,
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT},
    }
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module (it would otherwise
        # BEGIN lazily and DEFERRED): statements autocommit unless _on_begin begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
            cursor.execute("PRAGMA foreign_keys=OFF")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Only connections marked WRITE get a transaction (the migrations); every
        # other statement autocommits. BEGIN IMMEDIATE because a deferred transaction
        # that later writes can fail at once with SQLITE_BUSY (no busy wait when a
        # read lock is upgraded).
        if conn.get_execution_options().get(WRITE, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def store_error(exc: sa_exc.SQLAlchemyError, url: URL, operation: str) -> StoreError:
    """A :class:`StoreError` for ``exc``, with a one-line message without credentials.

    Args:
        exc: the SQLAlchemy error (``DBAPIError`` subclasses carry the driver error).
        url: the database URL, used to name the database and to scrub the password.
        operation: what the store was doing, e.g. ``"update_process"``.
    """
    orig = getattr(exc, "orig", None)
    cause = orig if isinstance(orig, BaseException) else exc
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    message = f"{operation} on {safe_url(url)} failed: {type(cause).__name__}: {detail}"
    if url.password:
        message = message.replace(str(url.password), "***")
    return StoreError(message)
