"""The SQL :class:`~dispatcher.store.base.Store`: SQLite (embedded) or PostgreSQL.

URL format (SQLAlchemy): ``sqlite:////var/lib/pd/pd.db`` or
``postgresql+psycopg://user:password@host:5432/dbname``; see
:mod:`dispatcher.store.engine` for the connection settings of each backend.

Capabilities: every rule of :mod:`dispatcher.store.base`. Each method is one short
transaction. Versioned records are written with ``UPDATE ... WHERE key = ? AND
version = ?``: a write based on a stale read matches no row and raises
``WriteConflictError`` (optimistic concurrency, no locks held between calls), so
several threads, and several dispatcher instances sharing one PostgreSQL
database, never lose an update. Reads use SQLAlchemy Core (no ORM) so that
listing 100,000 processes stays fast.

Errors: a duplicate key on add becomes ``WriteConflictError``; every other
database failure becomes ``StoreError`` (message without credentials), after
one or two transparent retries for reads and for failures to connect. A value
that is not JSON-serializable raises ``TypeError``.

Listeners are called in the writing thread after the transaction committed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import sqlalchemy.exc as sa_exc
from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher.errors import NotFoundError, StoreError, WriteConflictError
from dispatcher.model import Definition, Node, Process, Resource
from dispatcher.states import ProcessDispatcherState
from dispatcher.store import migrate
from dispatcher.store._codec import assigned_pairs
from dispatcher.store.base import ChangeListener
from dispatcher.store.engine import WRITE, make_engine, parse_url, store_error
from dispatcher.store.schema import (
    definitions,
    engines,
    nodes,
    pd_state,
    processes,
    queue,
    resources,
)

__all__ = ["SqlStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Extra attempts for reads (and for connecting) after a transient failure.
READ_RETRIES: Final = 2
#: Seconds before the first retry; doubled for each further attempt.
RETRY_DELAY: Final = 0.05

_PD_STATE_KEY: Final = "pd_state"
_SYSTEM_BOOT_KEY: Final = "system_boot"
_INITIALIZED_KEY: Final = "initialized"


@dataclasses.dataclass(frozen=True)
class _Kind:
    """How one versioned record type maps onto its table."""

    name: str
    table: Table
    key: str
    fields: tuple[str, ...]  # dataclass field order == selected column order
    record: Callable[..., Any]

    @property
    def data_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f not in (self.key, "version"))


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _resource(*values: Any) -> Resource:
    resource = Resource(*values)
    resource.assigned = assigned_pairs(resource.assigned)
    return resource


_PROCESS = _Kind("process", processes, "upid", _fields(Process), Process)
_RESOURCE = _Kind("resource", resources, "resource_id", _fields(Resource), _resource)
_NODE = _Kind("node", nodes, "node_id", _fields(Node), Node)
_DEFINITION_COLUMNS: Final = tuple(
    definitions.c["legacy_version" if f == "version" else f] for f in _fields(Definition)
)


def _update_statement(kind: _Kind) -> Any:
    table = kind.table
    return (
        update(table)
        .where(table.c[kind.key] == bindparam("k_key"), table.c.version == bindparam("k_version"))
        .values(
            {**{f: bindparam(f"p_{f}") for f in kind.data_fields}, "version": table.c.version + 1}
        )
    )


_UPDATES: Final = {kind.name: _update_statement(kind) for kind in (_PROCESS, _RESOURCE, _NODE)}
_SELECTS: Final = {
    kind.name: select(*(kind.table.c[f] for f in kind.fields))
    for kind in (_PROCESS, _RESOURCE, _NODE)
}


class SqlStore:
    """A store in a SQL database; see the module docstring.

    Args:
        url: a SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``).
        create: bring the schema to the newest migration first (idempotent). When
            false, the database must already be migrated.

    Raises:
        ConfigError: the URL is malformed or unsupported.
        StoreError: the database cannot be reached, or (``create=False``) has not
            been migrated to this version's schema.
    """

    def __init__(self, url: str, *, create: bool = False) -> None:
        self._url = parse_url(url)
        self._engine = make_engine(self._url)
        self._listeners: list[ChangeListener] = []
        self._listeners_lock = threading.Lock()
        self._dialect = self._engine.dialect.name
        try:
            if create:
                migrate.upgrade_engine(self._engine)
            else:
                self._check_schema()
        except BaseException:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"SqlStore({self._url.render_as_string(hide_password=True)!r})"

    def _check_schema(self) -> None:
        found, wanted = migrate.current_on(self._engine), migrate.head()
        if found is None:
            raise StoreError(
                f"database {self._url.render_as_string(hide_password=True)} has no schema; "
                "create it with create=True or dispatcher.store.migrate.upgrade"
            )
        if found != wanted:
            # A newer revision (a newer dispatcher migrated first) is tolerated.
            log.warning("database schema revision %s, this dispatcher expects %s", found, wanted)

    # -- plumbing --------------------------------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(kind)`` after every committed write made through this store."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def close(self) -> None:
        """Close every pooled connection; the store must not be used afterwards."""
        self._engine.dispose()

    def _notify(self, kind: str) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(kind)

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        try:
            yield
        except sa_exc.StatementError as exc:
            if not isinstance(exc, sa_exc.DBAPIError) and isinstance(
                exc.orig, TypeError | ValueError
            ):  # a bind value SQLAlchemy could not process, e.g. not JSON-serializable
                raise TypeError(f"{operation}: {exc.orig}") from exc
            raise store_error(exc, self._url, operation) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise store_error(exc, self._url, operation) from exc

    def _connect(self, operation: str, *, write: bool) -> Connection:
        """A pooled connection, retrying transient failures (nothing was sent yet)."""
        for attempt in range(READ_RETRIES + 1):
            try:
                conn = self._engine.connect()
                return conn.execution_options(**{WRITE: True}) if write else conn
            except sa_exc.DBAPIError as exc:
                if attempt == READ_RETRIES:
                    raise store_error(exc, self._url, operation) from exc
                log.warning("%s: retrying the connection after %s", operation, exc.orig)
                time.sleep(RETRY_DELAY * 2**attempt)
        raise AssertionError("unreachable")

    def _read(self, operation: str, fn: Callable[[Connection], _T]) -> _T:
        """Run ``fn`` in a read transaction, retrying transient failures."""
        for attempt in range(READ_RETRIES + 1):
            with self._translated(operation):
                try:
                    with self._connect(operation, write=False) as conn:
                        return fn(conn)
                except sa_exc.DBAPIError as exc:
                    transient = (
                        isinstance(exc, sa_exc.OperationalError) or exc.connection_invalidated
                    )
                    if not transient or attempt == READ_RETRIES:
                        raise
                    log.warning("%s: retrying after %s", operation, exc.orig)
                    time.sleep(RETRY_DELAY * 2**attempt)
        raise AssertionError("unreachable")

    def _write(self, kind: str, operation: str, fn: Callable[[Connection], _T]) -> _T:
        """Run ``fn`` in one write transaction, commit, then notify the listeners."""
        with (
            self._translated(operation),
            self._connect(operation, write=True) as conn,
            conn.begin(),
        ):
            result = fn(conn)
        self._notify(kind)
        return result

    def _insert(self, kind: str, operation: str, table: Table, row: dict[str, Any]) -> None:
        def run(conn: Connection) -> None:
            try:
                conn.execute(insert(table), row)
            except sa_exc.IntegrityError as exc:
                raise WriteConflictError(f"{operation}: {kind} already exists") from exc

        self._write(kind, operation, run)

    # -- versioned records: shared logic ---------------------------------------------
    def _add(self, kind: _Kind, record: Any) -> None:
        row = {f: getattr(record, f) for f in kind.fields}
        row["version"] = 1
        key = row[kind.key]
        try:
            self._insert(kind.name, f"add_{kind.name}", kind.table, row)
        except WriteConflictError:
            raise WriteConflictError(f"{kind.name} {key!r} exists") from None
        record.version = 1

    def _update(self, kind: _Kind, record: Any) -> None:
        key, version = getattr(record, kind.key), record.version
        params = {f"p_{f}": getattr(record, f) for f in kind.data_fields}
        params["k_key"], params["k_version"] = key, version

        def run(conn: Connection) -> None:
            if conn.execute(_UPDATES[kind.name], params).rowcount == 1:
                return
            stored = conn.execute(
                select(kind.table.c.version).where(kind.table.c[kind.key] == key)
            ).scalar()
            if stored is None:
                raise NotFoundError(f"{kind.name} {key!r} not found")
            raise WriteConflictError(
                f"{kind.name} {key!r} changed: version {version}, stored {stored}"
            )

        self._write(kind.name, f"update_{kind.name}", run)
        record.version = version + 1

    def _get(self, kind: _Kind, key: str) -> Any:
        stmt = _SELECTS[kind.name].where(kind.table.c[kind.key] == key)
        row = self._read(f"get_{kind.name}", lambda conn: conn.execute(stmt).first())
        return None if row is None else kind.record(*row)

    def _list(self, kind: _Kind) -> list[Any]:
        stmt = _SELECTS[kind.name].order_by(kind.table.c[kind.key])
        rows = self._read(f"list_{kind.name}s", lambda conn: conn.execute(stmt).all())
        return [kind.record(*row) for row in rows]

    def _remove(self, kind: _Kind, key: str) -> None:
        table = kind.table

        def run(conn: Connection) -> None:
            if conn.execute(delete(table).where(table.c[kind.key] == key)).rowcount == 0:
                raise NotFoundError(f"{kind.name} {key!r} not found")

        self._write(kind.name, f"remove_{kind.name}", run)

    # -- definitions ----------------------------------------------------------------
    @staticmethod
    def _definition_row(definition: Definition) -> dict[str, Any]:
        return {
            col.name: getattr(definition, f)
            for col, f in zip(_DEFINITION_COLUMNS, _fields(Definition), strict=True)
        }

    def add_definition(self, definition: Definition) -> None:
        try:
            self._insert(
                "definition", "add_definition", definitions, self._definition_row(definition)
            )
        except WriteConflictError:
            raise WriteConflictError(f"definition {definition.definition_id!r} exists") from None

    def get_definition(self, definition_id: str) -> Definition | None:
        stmt = select(*_DEFINITION_COLUMNS).where(definitions.c.definition_id == definition_id)
        row = self._read("get_definition", lambda conn: conn.execute(stmt).first())
        return None if row is None else Definition(*row)

    def update_definition(self, definition: Definition) -> None:
        row = self._definition_row(definition)
        key = row.pop("definition_id")
        stmt = update(definitions).where(definitions.c.definition_id == key).values(row)

        def run(conn: Connection) -> None:
            if conn.execute(stmt).rowcount == 0:
                raise NotFoundError(f"definition {key!r} not found")

        self._write("definition", "update_definition", run)

    def remove_definition(self, definition_id: str) -> None:
        stmt = delete(definitions).where(definitions.c.definition_id == definition_id)

        def run(conn: Connection) -> None:
            if conn.execute(stmt).rowcount == 0:
                raise NotFoundError(f"definition {definition_id!r} not found")

        self._write("definition", "remove_definition", run)

    def list_definition_ids(self) -> list[str]:
        """Definition ids, sorted."""
        stmt = select(definitions.c.definition_id).order_by(definitions.c.definition_id)
        return self._read("list_definition_ids", lambda conn: list(conn.execute(stmt).scalars()))

    # -- processes ------------------------------------------------------------------
    def add_process(self, process: Process) -> None:
        self._add(_PROCESS, process)

    def get_process(self, upid: str) -> Process | None:
        found: Process | None = self._get(_PROCESS, upid)
        return found

    def update_process(self, process: Process) -> None:
        self._update(_PROCESS, process)

    def list_processes(self, states: Collection[str] | None = None) -> list[Process]:
        """All processes (optionally only those in ``states``), in creation order."""
        stmt = _SELECTS["process"].order_by(processes.c.id)
        if states is not None:
            stmt = stmt.where(processes.c.state.in_(list(states)))
        rows = self._read("list_processes", lambda conn: conn.execute(stmt).all())
        return [Process(*row) for row in rows]

    # -- queue ----------------------------------------------------------------------
    def enqueue(self, upid: str, round_: int) -> None:
        self._write(
            "queue",
            "enqueue",
            lambda conn: conn.execute(insert(queue), {"upid": upid, "round": round_}),
        )

    def remove_queued(self, upid: str, round_: int) -> None:
        match = (queue.c.upid == upid) & (queue.c.round == round_)
        oldest = select(func.min(queue.c.id)).where(match).scalar_subquery()
        stmt = delete(queue).where(queue.c.id == oldest)

        def run(conn: Connection) -> None:
            # Under READ COMMITTED a concurrent remover may take the entry the
            # subquery picked; try again while a matching entry remains.
            while conn.execute(stmt).rowcount == 0:
                if conn.execute(select(queue.c.id).where(match).limit(1)).first() is None:
                    raise NotFoundError(f"queue entry ({upid!r}, {round_}) not found")

        self._write("queue", "remove_queued", run)

    def list_queued(self) -> list[tuple[str, int]]:
        """Queue entries, oldest first."""
        stmt = select(queue.c.upid, queue.c.round).order_by(queue.c.id)
        rows = self._read("list_queued", lambda conn: conn.execute(stmt).all())
        return [(upid, round_) for upid, round_ in rows]

    def clear_queue(self) -> None:
        self._write("queue", "clear_queue", lambda conn: conn.execute(delete(queue)))

    # -- resources (eeagents) -------------------------------------------------------
    def add_resource(self, resource: Resource) -> None:
        self._add(_RESOURCE, resource)

    def get_resource(self, resource_id: str) -> Resource | None:
        found: Resource | None = self._get(_RESOURCE, resource_id)
        return found

    def update_resource(self, resource: Resource) -> None:
        self._update(_RESOURCE, resource)

    def remove_resource(self, resource_id: str) -> None:
        self._remove(_RESOURCE, resource_id)

    def list_resources(self) -> list[Resource]:
        """All resources, ordered by id."""
        found: list[Resource] = self._list(_RESOURCE)
        return found

    # -- nodes ----------------------------------------------------------------------
    def add_node(self, node: Node) -> None:
        self._add(_NODE, node)

    def get_node(self, node_id: str) -> Node | None:
        found: Node | None = self._get(_NODE, node_id)
        return found

    def update_node(self, node: Node) -> None:
        self._update(_NODE, node)

    def remove_node(self, node_id: str) -> None:
        self._remove(_NODE, node_id)

    def list_nodes(self) -> list[Node]:
        """All nodes, ordered by id."""
        found: list[Node] = self._list(_NODE)
        return found

    # -- engines added with add_engine ---------------------------------------------
    def add_engine(self, engine_id: str, spec: dict[str, object]) -> None:
        """Persist an engine; an existing id raises ``WriteConflictError``."""
        try:
            self._insert("engine", "add_engine", engines, {"engine_id": engine_id, "spec": spec})
        except WriteConflictError:
            raise WriteConflictError(f"engine {engine_id!r} exists") from None

    def list_engines(self) -> dict[str, dict[str, object]]:
        """All engines added with :meth:`add_engine`, ordered by id."""
        stmt = select(engines.c.engine_id, engines.c.spec).order_by(engines.c.engine_id)
        rows = self._read("list_engines", lambda conn: conn.execute(stmt).all())
        return {engine_id: spec for engine_id, spec in rows}

    # -- dispatcher-wide state ------------------------------------------------------
    def _state_values(self) -> dict[str, str]:
        stmt = select(pd_state.c.key, pd_state.c.value)
        rows = self._read("get_pd_state", lambda conn: conn.execute(stmt).all())
        return {key: value for key, value in rows}

    def _set_state_value(self, key: str, value: str) -> None:
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = dialect_insert(pd_state).values(key=key, value=value)
        stmt = stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value})
        self._write("state", f"set {key}", lambda conn: conn.execute(stmt))

    def get_pd_state(self) -> str:
        """``UNINITIALIZED`` until :meth:`set_initialized`, else the stored state."""
        values = self._state_values()
        if values.get(_INITIALIZED_KEY) != "true":
            return ProcessDispatcherState.UNINITIALIZED
        return values.get(_PD_STATE_KEY, ProcessDispatcherState.UNINITIALIZED)

    def set_pd_state(self, state: str) -> None:
        self._set_state_value(_PD_STATE_KEY, state)

    def is_system_boot(self) -> bool:
        return self._state_values().get(_SYSTEM_BOOT_KEY) == "true"

    def set_system_boot(self, system_boot: bool) -> None:
        self._set_state_value(_SYSTEM_BOOT_KEY, "true" if system_boot else "false")

    def is_initialized(self) -> bool:
        return self._state_values().get(_INITIALIZED_KEY) == "true"

    def set_initialized(self) -> None:
        self._set_state_value(_INITIALIZED_KEY, "true")
