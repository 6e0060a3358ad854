"""Leadership: only one dispatcher instance runs the singletons.

The matchmaker, the doctor and the provisioner run in every instance but act only
while that instance leads (docs/architecture.md, decision 8). Leadership is one
lock per database, whatever the instances' names:

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a
  dedicated connection; its key is derived from the connection's current schema
  (advisory locks are per database already). It is released when the holder
  stops, crashes or loses its connection, so another instance takes over within
  one ``poll_interval``.
* SQLite: an exclusive ``fcntl`` lock on ``<database>.leader`` (the database's
  resolved path: instances on one machine sharing one file); an in-memory
  database always leads.

A database belongs to one dispatcher system: the instances that share it must
share ``dashi.sysname`` and ``processdispatcher.service_name`` (their agents and
their launches are addressed by those). :func:`claim_database` records the
first system to start on a database and refuses any other one with
:class:`~pdcommon.errors.DatabaseOwnerError`. To move a database to another
system, stop its dispatchers and delete the ``owner`` row of ``pd_state``.

:class:`LeaderElector` runs a thread that keeps trying to acquire the lock and, as
long as it holds it, checks every ``poll_interval`` that it still does. It calls
``on_elected(term_stop)`` when it becomes leader (``term_stop`` is an Event set when
the term ends) and sets ``term_stop`` when leadership is lost or on :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashi.broker import mask_uri
from dispatcher.store.base import Store
from pdcommon.errors import DatabaseOwnerError

__all__ = ["LeaderElector", "LeaderLock", "claim_database", "lock_for_database"]

log = logging.getLogger(__name__)

#: Seconds between acquisition attempts and between checks that the lock is held.
DEFAULT_POLL_INTERVAL = 1.0
#: What the PostgreSQL advisory lock's key is derived from (with the schema).
LOCK_NAME = "leader"


class LeaderLock(Protocol):
    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this instance now holds it."""

    def still_held(self) -> bool:
        """True while the lock is held (False once its connection is lost)."""

    def release(self) -> None:
        """Give the lock up (safe to call when not held)."""


class AlwaysLeader:
    """For a database only this process can see (in-memory SQLite)."""

    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        pass


class FileLock:
    """An exclusive ``fcntl`` lock on a file (SQLite databases)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AdvisoryLock:
    """A PostgreSQL session advisory lock held on a dedicated connection."""

    def __init__(self, url: str, name: str = LOCK_NAME) -> None:
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.name = name
        #: The lock's key, known once connected (it depends on the current schema).
        self.key: int | None = None
        self._connection: sqlalchemy.Connection | None = None
        self._url = mask_uri(url)

    def try_acquire(self) -> bool:
        if self._connection is not None:
            return self.still_held()
        try:
            connection = self.engine.connect()
            if self.key is None:
                schema = connection.execute(sqlalchemy.text("SELECT current_schema()")).scalar()
                digest = hashlib.sha256(f"process-dispatcher:{self.name}:{schema}".encode())
                self.key = int.from_bytes(digest.digest()[:8], "big", signed=True)
            acquired = connection.execute(
                sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            ).scalar()
            connection.commit()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning("leadership: cannot reach %s (%s)", self._url, type(exc).__name__)
            return False
        if not acquired:
            connection.close()
            return False
        self._connection = connection
        return True

    def still_held(self) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.execute(sqlalchemy.text("SELECT 1")).scalar()
            self._connection.commit()
            return True
        except sqlalchemy.exc.SQLAlchemyError:
            self._drop()
            return False

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
                )
                self._connection.commit()
            except sqlalchemy.exc.SQLAlchemyError:
                pass
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                connection.close()


def lock_for_database(url: str) -> LeaderLock:
    """The leadership lock of the database ``url``: one per database (module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return AdvisoryLock(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            return AlwaysLeader()
        return FileLock(Path(f"{Path(database).resolve()}.leader"))
    return AlwaysLeader()


def claim_database(store: Store, url: str, sysname: str | None, service_name: str) -> None:
    """Record this dispatcher system as the owner of its database, or refuse it.

    Args:
        store: the database's store.
        url: its URL (for the message; credentials are masked).
        sysname: this dispatcher's ``dashi.sysname``.
        service_name: its ``processdispatcher.service_name``.

    Raises:
        DatabaseOwnerError: another system (other sysname or service name) owns it.
    """
    mine = {"sysname": sysname, "service_name": service_name}
    recorded = store.claim_owner(json.dumps(mine, sort_keys=True))
    try:
        owner = json.loads(recorded)
    except ValueError:
        owner = None
    if owner == mine:
        return
    raise DatabaseOwnerError(
        f"database {mask_uri(url)} belongs to the dispatcher system {_system(owner)}, "
        f"not to this one ({_system(mine)}): use another database, or the same "
        "dashi.sysname and processdispatcher.service_name"
    )


def _system(owner: object) -> str:
    """``dashi.sysname 'x', service_name 'y'`` for an owner record."""
    if not isinstance(owner, dict):
        return repr(owner)
    sysname = owner.get("sysname")
    return (
        f"dashi.sysname {'(none)' if sysname is None else repr(sysname)}, "
        f"service_name {owner.get('service_name')!r}"
    )


class LeaderElector:
    """Keep trying to lead; run ``on_elected`` for each term.

    Args:
        lock: the lock that decides leadership.
        on_elected: called in the elector's thread when a term starts, with an Event
            that is set when the term ends. It must return quickly (start threads).
        poll_interval: seconds between attempts and between checks.
    """

    def __init__(
        self,
        lock: LeaderLock,
        on_elected: Callable[[threading.Event], None],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.lock = lock
        self.on_elected = on_elected
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._term: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self._term is not None and not self._term.is_set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="leader-elector", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the current term (if any) and release the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        standing_by = False  # (said once until this dispatcher leads)
        try:
            while not self._stop.is_set():
                if self._term is None:
                    if self.lock.try_acquire():
                        log.info("leadership acquired")
                        standing_by = False
                        self._term = threading.Event()
                        try:
                            self.on_elected(self._term)
                        except Exception:
                            log.exception("starting the leader's singletons failed")
                            self._end_term()
                    elif not standing_by:
                        standing_by = True
                        log.info(
                            "leadership held by another dispatcher: standing by "
                            "(taking over if it stops)"
                        )
                elif not self.lock.still_held():
                    log.warning("leadership lost")
                    self._end_term()
                self._stop.wait(self.poll_interval)
        finally:
            self._end_term()

    def _end_term(self) -> None:
        term, self._term = self._term, None
        if term is not None:
            term.set()
        self.lock.release()
