"""The SQL :class:`~dispatcher.store.base.Store`: SQLite (embedded) or PostgreSQL.

URL format (SQLAlchemy): ``sqlite:////var/lib/pd/pd.db`` or
``postgresql+psycopg://user:password@host:5432/dbname``; see
:mod:`dispatcher.store.engine` for the connection settings of each backend.

Capabilities: every rule of :mod:`dispatcher.store.base`. Every method is one
or two single statements in autocommit mode (each atomic on its own), so no
transaction or lock outlives a call. Versioned records are written with
``UPDATE ... SET version = version + 1 WHERE key = ? AND version = ?``: a write
based on a stale read matches no row and raises ``WriteConflictError``, so
several threads, and several dispatcher instances sharing one PostgreSQL
database, never lose an update. SQLAlchemy Core only (no ORM), statements built
once, JSON columns decoded in one batch per listing: ``list_processes`` of
100,000 processes takes about a second.

Errors: a duplicate key on add becomes ``WriteConflictError``; every other
database failure becomes ``StoreError`` (message without credentials). Reads,
and failures to connect, are retried twice first; other writes are not (a
statement that failed in flight may have committed), callers retry them. A
value that is not JSON-serializable raises ``TypeError``.

Listeners are called in the writing thread after the write committed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Generic, TypeVar

import sqlalchemy.exc as sa_exc
from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Select,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from dashi import jsontree
from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.model import VM, Definition, Node, Process, Resource
from dispatcher.selectors import ProcessFilter
from dispatcher.store import migrate
from dispatcher.store._codec import (
    DEFINITION,
    NODE,
    PROCESS,
    RESOURCE,
    VM_LAYOUT,
    Layout,
    dumps,
    gc_paused,
)
from dispatcher.store.applied import AppliedRequest, claim, mark_recorded
from dispatcher.store.base import EVENT_KEYS, ChangeListener
from dispatcher.store.engine import (
    PG_POOL_SIZE,
    WRITE,
    make_engine,
    parse_url,
    safe_url,
    store_error,
)
from dispatcher.store.schema import (
    applied_requests,
    definitions,
    engines,
    nodes,
    pd_state,
    process_events,
    processes,
    queue,
    resources,
    vms,
)
from pdcommon.errors import StoreError
from pdcommon.states import ProcessDispatcherState

__all__ = ["SqlStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R", bound=Definition | Process | Resource | Node | VM)

#: Extra attempts for reads (and for connecting) after a transient failure.
READ_RETRIES: Final = 2
#: Seconds before the first retry; doubled for each further attempt.
RETRY_DELAY: Final = 0.05

#: PostgreSQL connections kept for transactions (migrations, batch writes): few run
#: at once, and every other statement uses the autocommit pool.
PG_TRANSACTION_POOL_SIZE: Final = 2

_PD_STATE_KEY: Final = "pd_state"
_SYSTEM_BOOT_KEY: Final = "system_boot"
_INITIALIZED_KEY: Final = "initialized"
#: Set by ``pd-dispatcher system-boot begin``: the next doctor initialises the
#: dispatcher again (in system-boot mode); removed when it has.
_BOOT_PENDING_KEY: Final = "boot_init_pending"
_OWNER_KEY: Final = "owner"
#: ``pd_state`` keys of the matchmaker's set-aside records: this prefix and the upid.
_SET_ASIDE_PREFIX: Final = "set_aside:"
#: ``pd_state`` keys of group deadlines: this prefix and the group name.
_GROUP_EXPIRY_PREFIX: Final = "group_expires_at:"


class _Mapping(Generic[_R]):
    """How one record type maps onto its table, with its statements built once."""

    def __init__(
        self, name: str, layout: Layout[_R], table: Table, renames: dict[str, str]
    ) -> None:
        self.name = name
        self.layout = layout
        self.table = table
        self.columns = {f: renames.get(f, f) for f in layout.fields}
        self.key_column: Column[Any] = table.c[self.columns[layout.key]]
        # Definition.version is the legacy field (always None), not a row version.
        self.versioned = layout.cls is not Definition
        # JSON columns are read as text and decoded in one batch (see _codec).
        self.select: Select[Any] = select(
            *(table.c[self.columns[f]] for f in layout.scalar_fields),
            *(cast(table.c[self.columns[f]], Text) for f in layout.json_fields),
        )
        data = [
            f for f in layout.fields if f != layout.key and not (self.versioned and f == "version")
        ]
        where = self.key_column == bindparam("k_key")
        values: dict[str, Any] = {self.columns[f]: bindparam(f"p_{f}") for f in data}
        if self.versioned:
            where = where & (table.c.version == bindparam("k_version"))
            values["version"] = table.c.version + 1
        self.update = update(table).where(where).values(values)
        self.insert = insert(table)
        self.get = self.select.where(self.key_column == bindparam("k_key"))
        self.list = self.select.order_by(self.key_column)
        self.delete = delete(table).where(self.key_column == bindparam("k_key"))
        probed = table.c.version if self.versioned else self.key_column
        self.probe = select(probed).where(self.key_column == bindparam("k_key"))
        self._data = data

    def row(self, record: _R) -> dict[str, Any]:
        """Column values for an insert."""
        return {column: getattr(record, field) for field, column in self.columns.items()}

    def update_params(self, record: _R) -> dict[str, Any]:
        params = {f"p_{f}": getattr(record, f) for f in self._data}
        params["k_key"] = getattr(record, self.layout.key)
        if self.versioned:
            params["k_version"] = record.version
        return params


_DEFINITIONS: Final = _Mapping("definition", DEFINITION, definitions, {"version": "legacy_version"})
_PROCESSES: Final = _Mapping("process", PROCESS, processes, {"group": "group_name"})
_RESOURCES: Final = _Mapping("resource", RESOURCE, resources, {})
_NODES: Final = _Mapping("node", NODE, nodes, {})
_VMS: Final = _Mapping("vm", VM_LAYOUT, vms, {})

# Statements are built once: building and cache-keying a statement per call costs
# about a third of a simple read.
_LIST_DEFINITION_IDS: Final = select(definitions.c.definition_id).order_by(
    definitions.c.definition_id
)
_LIST_PROCESSES: Final = _PROCESSES.select.order_by(processes.c.id)
_LIST_PROCESSES_IN_STATES: Final = _LIST_PROCESSES.where(
    processes.c.state.in_(bindparam("states", expanding=True))
)
_ENQUEUE: Final = insert(queue)


def _process_conditions(selected: ProcessFilter) -> list[ColumnElement[bool]]:
    """The ``WHERE`` conditions of a process filter (all but its label selector).

    The engine narrows on the JSON text of ``constraints`` (the engine id as a JSON
    string in it); the caller checks the exact engine on the rows it returns.
    """
    conditions: list[ColumnElement[bool]] = []
    if selected.states is not None:
        conditions.append(processes.c.state.in_(list(selected.states)))
    if selected.group is not None:
        conditions.append(processes.c.group_name == selected.group)
    if selected.name_prefix is not None:
        conditions.append(processes.c.name.startswith(selected.name_prefix, autoescape=True))
    if selected.upid_prefix is not None:
        conditions.append(processes.c.upid.startswith(selected.upid_prefix, autoescape=True))
    if selected.engine is not None:
        constraints = cast(processes.c.constraints, Text)
        conditions.append(constraints.contains(dumps(selected.engine), autoescape=True))
    return conditions


_QUEUE_MATCH: Final = (queue.c.upid == bindparam("upid")) & (queue.c.round == bindparam("round"))
_DEQUEUE: Final = delete(queue).where(
    queue.c.id == select(func.min(queue.c.id)).where(_QUEUE_MATCH).scalar_subquery()
)
_QUEUED: Final = select(queue.c.id).where(_QUEUE_MATCH).limit(1)
_LIST_QUEUED: Final = select(queue.c.upid, queue.c.round).order_by(queue.c.id)
_CLEAR_QUEUE: Final = delete(queue)
_ADD_ENGINE: Final = insert(engines)
_LIST_ENGINES: Final = select(engines.c.engine_id, engines.c.spec).order_by(engines.c.engine_id)
_STATE_VALUES: Final = select(pd_state.c.key, pd_state.c.value).where(
    pd_state.c.key.in_(
        [_PD_STATE_KEY, _SYSTEM_BOOT_KEY, _INITIALIZED_KEY, _OWNER_KEY, _BOOT_PENDING_KEY]
    )
)
_GROUP_EXPIRY_VALUES: Final = (
    select(pd_state.c.key, pd_state.c.value)
    .where(pd_state.c.key.startswith(_GROUP_EXPIRY_PREFIX, autoescape=True))
    .order_by(pd_state.c.key)
)
_FORGET_STATE_VALUE: Final = delete(pd_state).where(pd_state.c.key == bindparam("key"))
_SET_ASIDE_VALUES: Final = (
    select(pd_state.c.key, pd_state.c.value)
    .where(pd_state.c.key.startswith(_SET_ASIDE_PREFIX, autoescape=True))
    .order_by(pd_state.c.key)
)
_RECORD_APPLIED: Final = insert(applied_requests)
_GET_APPLIED: Final = select(
    applied_requests.c.request_id,
    applied_requests.c.op,
    applied_requests.c.digest,
    applied_requests.c.result,
    applied_requests.c.applied_at,
).where(applied_requests.c.request_id == bindparam("request_id"))
#: The ``applied_at`` of the newest record beyond the ``keep`` newest (NULL if none).
_KEPT_FROM: Final = (
    select(applied_requests.c.applied_at)
    .order_by(applied_requests.c.applied_at.desc())
    .limit(1)
    .offset(bindparam("keep"))
    .scalar_subquery()
)
_PRUNE_APPLIED: Final = delete(applied_requests).where(
    (applied_requests.c.applied_at < bindparam("before"))
    | (applied_requests.c.applied_at <= _KEPT_FROM)
)
_ADD_EVENTS: Final = insert(process_events)
_LIST_EVENTS: Final = (
    select(process_events.c.id, *(process_events.c[key] for key in EVENT_KEYS))
    .where(process_events.c.upid == bindparam("upid"))
    .order_by(process_events.c.id.desc())
    .limit(bindparam("limit"))
)
#: Events beyond the newest ``per_process`` of their process (a window function:
#: SQLite 3.25+, PostgreSQL).
_EVENT_RANKS: Final = select(
    process_events.c.id,
    func.row_number()
    .over(partition_by=process_events.c.upid, order_by=process_events.c.id.desc())
    .label("rank"),
).subquery()
_PRUNE_EVENTS_PER_PROCESS: Final = delete(process_events).where(
    process_events.c.id.in_(
        select(_EVENT_RANKS.c.id).where(_EVENT_RANKS.c.rank > bindparam("per_process"))
    )
)
#: The id of the newest event beyond the ``total`` newest (NULL if none).
_EVENTS_KEPT_FROM: Final = (
    select(process_events.c.id)
    .order_by(process_events.c.id.desc())
    .limit(1)
    .offset(bindparam("total"))
    .scalar_subquery()
)
_PRUNE_EVENTS_TOTAL: Final = delete(process_events).where(process_events.c.id <= _EVENTS_KEPT_FROM)


def _add_process_queued_pg(record_applied: bool = False) -> Insert:
    """``WITH added AS (INSERT INTO processes ... ON CONFLICT DO NOTHING RETURNING upid,
    round) INSERT INTO queue SELECT upid, round FROM added RETURNING id``: one queue
    row if the process was added, none if its upid exists (the driver reports no
    row count for this form, hence the ``RETURNING``).

    With ``record_applied``, a second CTE inserts the pending request's record
    (parameters ``r_*``) when the process was added: still one statement, so one
    round trip and atomic (a duplicate request id fails the whole statement)."""
    columns = [column for column in processes.columns if column.name != "id"]
    added = (
        postgresql.insert(processes)
        .values({c.name: bindparam(f"p_{c.name}", type_=c.type) for c in columns})
        .on_conflict_do_nothing(index_elements=[processes.c.upid])
        .returning(processes.c.upid, processes.c.round)
        .cte("added")
    )
    statement = (
        insert(queue)
        .from_select(["upid", "round"], select(added.c.upid, added.c.round))
        .returning(queue.c.id)
    )
    if record_applied:
        names = [c.name for c in applied_requests.columns]
        recorded = (
            insert(applied_requests)
            .from_select(
                names,
                select(
                    *(bindparam(f"r_{c.name}", type_=c.type) for c in applied_requests.columns)
                ).select_from(added),
            )
            .cte("recorded")
        )
        statement = statement.add_cte(recorded)
    return statement


def _applied_row(applied: AppliedRequest) -> dict[str, Any]:
    return {
        "request_id": applied.request_id,
        "op": applied.op,
        "digest": applied.digest,
        "result": applied.result,
        "applied_at": applied.applied_at,
    }


def _applied_already(applied: AppliedRequest | None) -> WriteConflictError:
    request_id = applied.request_id if applied is not None else "?"
    return WriteConflictError(f"request {request_id!r} was applied already")


class SqlStore:
    """A store in a SQL database; see the module docstring.

    Args:
        url: a SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``).
        create: bring the schema to the newest migration first (idempotent). When
            false, the database must already be migrated.
        pool_size: PostgreSQL connections kept open: at least the number of threads
            using the store at once.

    Raises:
        ConfigError: the URL is malformed or unsupported.
        StoreError: the database cannot be reached, or (``create=False``) has not
            been migrated.
    """

    def __init__(self, url: str, *, create: bool = False, pool_size: int = PG_POOL_SIZE) -> None:
        self._url = parse_url(url)
        # Every store operation is a short sequence of single statements, each atomic
        # on its own, so they run in autocommit mode: no BEGIN/COMMIT round trips.
        # On PostgreSQL that is a pool of its own (_auto); _engine, for the few
        # transactions (migrations, batches), opens its connections only when used.
        # SQLite's engine already leaves transactions off unless asked for one.
        self._engine = make_engine(self._url, pool_size=PG_TRANSACTION_POOL_SIZE)
        self._auto: Engine = self._engine
        if self._engine.dialect.name == "postgresql":
            self._auto = make_engine(self._url, pool_size=pool_size, autocommit=True)
        upsert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        self._set_state = (
            upsert(pd_state)
            .values(key=bindparam("key"), value=bindparam("value"))
            .on_conflict_do_update(index_elements=["key"], set_={"value": bindparam("value")})
        )
        self._claim_state = (
            upsert(pd_state)
            .values(key=bindparam("key"), value=bindparam("value"))
            .on_conflict_do_nothing(index_elements=["key"])
        )
        # PostgreSQL adds a process with its queue entry in one statement.
        self._add_queued = (
            _add_process_queued_pg() if self._engine.dialect.name == "postgresql" else None
        )
        self._add_queued_recorded = (
            _add_process_queued_pg(record_applied=True)
            if self._engine.dialect.name == "postgresql"
            else None
        )
        self._listeners: list[ChangeListener] = []
        self._listeners_lock = threading.Lock()
        try:
            if create:
                migrate.upgrade_engine(self._engine)
            else:
                self._check_schema()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SqlStore({safe_url(self._url)!r})"

    def _check_schema(self) -> None:
        found, wanted = migrate.current_on(self._engine), migrate.head()
        if found is None:
            raise StoreError(
                f"database {safe_url(self._url)} has no schema; "
                "create it with create=True or dispatcher.store.migrate.upgrade"
            )
        if found != wanted:
            # A newer dispatcher may have migrated first; its schema stays compatible.
            log.warning("database schema revision %s, this dispatcher expects %s", found, wanted)

    # -- lifecycle -------------------------------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(kind)`` after every committed write made through this store."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def close(self) -> None:
        """Close every pooled connection; the store must not be used afterwards."""
        self._auto.dispose()
        self._engine.dispose()

    # -- plumbing --------------------------------------------------------------------
    def _notify(self, kind: str) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(kind)

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        """Turn SQLAlchemy errors into :class:`StoreError` (or ``TypeError`` for bad values)."""
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

    def _connect(self, operation: str) -> Connection:
        """A pooled connection, retrying transient failures (no statement was sent yet)."""
        for attempt in range(READ_RETRIES + 1):
            try:
                return self._auto.connect()
            except sa_exc.DBAPIError as exc:
                if attempt == READ_RETRIES:
                    raise store_error(exc, self._url, operation) from exc
                log.warning("%s: retrying the connection after %s", operation, exc.orig)
                time.sleep(RETRY_DELAY * 2**attempt)
        raise AssertionError("unreachable")

    def _read(self, operation: str, fn: Callable[[Connection], _T]) -> _T:
        """Run the read ``fn``, retrying it after a transient failure."""
        for attempt in range(READ_RETRIES + 1):
            with self._translated(operation):
                try:
                    with self._connect(operation) as conn:
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

    def _write(
        self,
        kind: str,
        operation: str,
        fn: Callable[[Connection], _T],
        applied: AppliedRequest | None = None,
    ) -> _T:
        """Run the write ``fn`` (autocommitted statements), then notify the listeners.

        With ``applied``, ``fn`` and the insert of that record run in one
        transaction (see :mod:`dispatcher.store.applied`).

        Writes are not retried: a statement that failed in flight may have committed.
        """
        with self._translated(operation), self._connect(operation) as conn:
            result = fn(conn) if applied is None else self._with_applied(conn, fn, applied)
        if applied is not None:
            mark_recorded()
        self._notify(kind)
        return result

    def _with_applied(
        self, conn: Connection, fn: Callable[[Connection], _T], applied: AppliedRequest
    ) -> _T:
        """``fn`` and the record of ``applied`` in one transaction."""
        if conn.dialect.name == "postgresql":
            # The pool is in autocommit mode; this connection gets a transaction
            # (the pool resets the mode when it takes the connection back).
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        else:
            conn.execution_options(**{WRITE: True})  # BEGIN IMMEDIATE
        with conn.begin():
            result = fn(conn)
            try:
                conn.execute(_RECORD_APPLIED, [_applied_row(applied)])
            except sa_exc.IntegrityError:
                raise _applied_already(applied) from None
        return result

    # -- records: shared logic -------------------------------------------------------
    def _add(self, mapping: _Mapping[_R], record: _R) -> None:
        row = mapping.row(record)
        key = getattr(record, mapping.layout.key)
        if mapping.versioned:
            row["version"] = 1

        def run(conn: Connection) -> None:
            try:
                conn.execute(mapping.insert, [row])  # executemany: no RETURNING
            except sa_exc.IntegrityError:
                raise WriteConflictError(f"{mapping.name} {key!r} exists") from None

        self._write(mapping.name, f"add_{mapping.name}", run, claim(mapping.name, record))
        if mapping.versioned:
            record.version = 1

    def _update(self, mapping: _Mapping[_R], record: _R) -> None:
        params = mapping.update_params(record)
        key = params["k_key"]

        def run(conn: Connection) -> None:
            if conn.execute(mapping.update, params).rowcount == 1:
                return
            if not mapping.versioned:
                raise NotFoundError(f"{mapping.name} {key!r} not found")
            stored = conn.execute(mapping.probe, {"k_key": key}).scalar()
            if stored is None:
                raise NotFoundError(f"{mapping.name} {key!r} not found")
            raise WriteConflictError(
                f"{mapping.name} {key!r} changed: version {record.version}, stored {stored}"
            )

        self._write(mapping.name, f"update_{mapping.name}", run, claim(mapping.name, record))
        if mapping.versioned:
            record.version += 1

    def _get(self, mapping: _Mapping[_R], key: str) -> _R | None:
        params = {"k_key": key}
        rows = self._read(
            f"get_{mapping.name}", lambda conn: conn.execute(mapping.get, params).all()
        )
        return mapping.layout.build_from_columns(rows)[0] if rows else None

    def _list(self, mapping: _Mapping[_R]) -> list[_R]:
        rows = self._read(f"list_{mapping.name}s", lambda conn: conn.execute(mapping.list).all())
        return mapping.layout.build_from_columns(rows)

    def _remove(self, mapping: _Mapping[_R], key: str) -> None:
        params = {"k_key": key}

        def run(conn: Connection) -> None:
            if conn.execute(mapping.delete, params).rowcount == 0:
                raise NotFoundError(f"{mapping.name} {key!r} not found")

        self._write(mapping.name, f"remove_{mapping.name}", run, claim(mapping.name, None))

    # -- definitions ----------------------------------------------------------------
    def add_definition(self, definition: Definition) -> None:
        self._add(_DEFINITIONS, definition)

    def get_definition(self, definition_id: str) -> Definition | None:
        return self._get(_DEFINITIONS, definition_id)

    def update_definition(self, definition: Definition) -> None:
        self._update(_DEFINITIONS, definition)

    def remove_definition(self, definition_id: str) -> None:
        self._remove(_DEFINITIONS, definition_id)

    def list_definition_ids(self) -> list[str]:
        """Definition ids, sorted."""
        stmt = _LIST_DEFINITION_IDS
        return self._read("list_definition_ids", lambda conn: list(conn.execute(stmt).scalars()))

    # -- processes ------------------------------------------------------------------
    def add_process(self, process: Process) -> None:
        self._add(_PROCESSES, process)

    def add_process_queued(self, process: Process) -> None:
        """Add ``process`` and append ``(upid, round)`` to the queue, atomically.

        PostgreSQL: one statement (the queue row is inserted from the process
        insert's ``RETURNING``), i.e. one round trip. SQLite: both inserts in one
        ``BEGIN IMMEDIATE`` transaction.
        """
        row = _PROCESSES.row(process)
        row["version"] = 1
        conflict = WriteConflictError(f"process {process.upid!r} exists")

        applied = claim("process", process)

        def run(conn: Connection) -> None:
            if self._add_queued is not None:
                params = {f"p_{column}": value for column, value in row.items()}
                statement = self._add_queued
                if applied is not None and self._add_queued_recorded is not None:
                    statement = self._add_queued_recorded
                    params.update({f"r_{k}": v for k, v in _applied_row(applied).items()})
                try:
                    added = conn.execute(statement, params).first()
                except sa_exc.IntegrityError:  # only the request id can conflict here
                    raise _applied_already(applied) from None
                if added is None:
                    raise conflict
                return
            conn.execution_options(**{WRITE: True})  # BEGIN IMMEDIATE
            # (in the transaction that records a pending request, if there is one)
            with contextlib.nullcontext() if conn.in_transaction() else conn.begin():
                try:
                    conn.execute(_PROCESSES.insert, [row])
                except sa_exc.IntegrityError:
                    raise conflict from None
                conn.execute(_ENQUEUE, [{"upid": process.upid, "round": process.round}])

        if self._add_queued_recorded is not None:
            # PostgreSQL records the request in the statement itself (no transaction).
            self._write("process", "add_process_queued", run)
            if applied is not None:
                mark_recorded()
        else:
            self._write("process", "add_process_queued", run, applied)
        process.version = 1
        self._notify("queue")

    def get_process(self, upid: str) -> Process | None:
        return self._get(_PROCESSES, upid)

    def update_process(self, process: Process) -> None:
        self._update(_PROCESSES, process)

    def list_processes(self, states: Collection[str] | None = None) -> list[Process]:
        """All processes (optionally only those in ``states``), in creation order."""
        stmt, params = _LIST_PROCESSES, {}
        if states is not None:
            stmt, params = _LIST_PROCESSES_IN_STATES, {"states": list(states)}
        with gc_paused():  # the listing may hold 100,000 rows: see _codec
            rows = self._read("list_processes", lambda conn: conn.execute(stmt, params).all())
            return PROCESS.build_from_columns(rows)

    def list_process_dicts(self, selected: ProcessFilter | None = None) -> list[dict[str, Any]]:
        """Every process's ``to_dict()``, in creation order, built straight from the rows
        (only those ``selected``: the query narrows on states, group, engine and the
        prefixes; the label selector and the exact engine are checked here)."""
        stmt = _LIST_PROCESSES
        if selected is not None and not selected.empty:
            stmt = _LIST_PROCESSES.where(*_process_conditions(selected))
        with gc_paused():  # 100,000 rows and more: see _codec
            rows = self._read("list_process_dicts", lambda conn: conn.execute(stmt).all())
            dicts = PROCESS.wire_dicts_from_columns(rows)
        if selected is not None and (selected.engine is not None or selected.labels.requirements):
            dicts = [d for d in dicts if selected.matches(d)]
        return dicts

    # -- queue ----------------------------------------------------------------------
    def enqueue(self, upid: str, round_: int) -> None:
        row = {"upid": upid, "round": round_}
        self._write("queue", "enqueue", lambda conn: conn.execute(_ENQUEUE, [row]))

    def remove_queued(self, upid: str, round_: int) -> None:
        params = {"upid": upid, "round": round_}

        def run(conn: Connection) -> None:
            # A concurrent remover may take the entry the subquery picked (PostgreSQL
            # evaluates it before waiting on the row lock); try again while one remains.
            while conn.execute(_DEQUEUE, params).rowcount == 0:
                if conn.execute(_QUEUED, params).first() is None:
                    raise NotFoundError(f"queue entry ({upid!r}, {round_}) not found")

        self._write("queue", "remove_queued", run)

    def list_queued(self) -> list[tuple[str, int]]:
        """Queue entries, oldest first."""
        rows = self._read("list_queued", lambda conn: conn.execute(_LIST_QUEUED).all())
        return [(upid, round_) for upid, round_ in rows]

    def clear_queue(self) -> None:
        self._write("queue", "clear_queue", lambda conn: conn.execute(_CLEAR_QUEUE))

    # -- resources (eeagents) -------------------------------------------------------
    def add_resource(self, resource: Resource) -> None:
        self._add(_RESOURCES, resource)

    def get_resource(self, resource_id: str) -> Resource | None:
        return self._get(_RESOURCES, resource_id)

    def update_resource(self, resource: Resource) -> None:
        self._update(_RESOURCES, resource)

    def remove_resource(self, resource_id: str) -> None:
        self._remove(_RESOURCES, resource_id)

    def list_resources(self) -> list[Resource]:
        """All resources, ordered by id."""
        return self._list(_RESOURCES)

    # -- nodes ----------------------------------------------------------------------
    def add_node(self, node: Node) -> None:
        self._add(_NODES, node)

    def get_node(self, node_id: str) -> Node | None:
        return self._get(_NODES, node_id)

    def update_node(self, node: Node) -> None:
        self._update(_NODES, node)

    def remove_node(self, node_id: str) -> None:
        self._remove(_NODES, node_id)

    def list_nodes(self) -> list[Node]:
        """All nodes, ordered by id."""
        return self._list(_NODES)

    # -- VMs (provisioned nodes) ---------------------------------------------------
    def add_vm(self, vm: VM) -> None:
        self._add(_VMS, vm)

    def get_vm(self, node_id: str) -> VM | None:
        return self._get(_VMS, node_id)

    def update_vm(self, vm: VM) -> None:
        self._update(_VMS, vm)

    def remove_vm(self, node_id: str) -> None:
        self._remove(_VMS, node_id)

    def list_vms(self) -> list[VM]:
        """All VMs, ordered by node id."""
        return self._list(_VMS)

    # -- engines added with add_engine ---------------------------------------------
    def add_engine(self, engine_id: str, spec: dict[str, object]) -> None:
        """Persist an engine; an existing id raises ``WriteConflictError``."""
        row = {"engine_id": engine_id, "spec": spec}

        def run(conn: Connection) -> None:
            try:
                conn.execute(_ADD_ENGINE, [row])
            except sa_exc.IntegrityError:
                raise WriteConflictError(f"engine {engine_id!r} exists") from None

        self._write("engine", "add_engine", run)

    def list_engines(self) -> dict[str, dict[str, object]]:
        """All engines added with :meth:`add_engine`, ordered by id."""
        rows = self._read("list_engines", lambda conn: conn.execute(_LIST_ENGINES).all())
        return {engine_id: spec for engine_id, spec in rows}

    # -- applied requests -----------------------------------------------------------
    def get_applied_request(self, request_id: str) -> AppliedRequest | None:
        params = {"request_id": request_id}
        row = self._read(
            "get_applied_request", lambda conn: conn.execute(_GET_APPLIED, params).first()
        )
        if row is None:
            return None
        return AppliedRequest(
            request_id=row.request_id,
            op=row.op,
            digest=row.digest,
            result=row.result,
            applied_at=row.applied_at,
        )

    def prune_applied_requests(self, before: float, keep: int) -> int:
        """Forget requests applied before ``before``, and all but the newest ``keep``."""
        params = {"before": before, "keep": keep}
        removed: int = self._write(
            "applied",
            "prune_applied_requests",
            lambda conn: conn.execute(_PRUNE_APPLIED, params).rowcount,
        )
        return removed

    # -- process events -------------------------------------------------------------
    def add_process_events(self, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        rows = [{key: event.get(key) for key in EVENT_KEYS} for event in events]
        self._write("events", "add_process_events", lambda conn: conn.execute(_ADD_EVENTS, rows))

    def list_process_events(self, upid: str, limit: int) -> list[dict[str, Any]]:
        params = {"upid": upid, "limit": limit}
        rows = self._read(
            "list_process_events", lambda conn: conn.execute(_LIST_EVENTS, params).all()
        )
        return [dict(row._mapping) for row in reversed(rows)]

    def prune_process_events(self, per_process: int, total: int) -> int:
        def run(conn: Connection) -> int:
            removed = conn.execute(_PRUNE_EVENTS_PER_PROCESS, {"per_process": per_process})
            count = int(removed.rowcount)
            return count + int(conn.execute(_PRUNE_EVENTS_TOTAL, {"total": total}).rowcount)

        pruned: int = self._write("events", "prune_process_events", run)
        return pruned

    # -- dispatcher-wide state ------------------------------------------------------
    def _state_values(self, operation: str) -> dict[str, str]:
        rows = self._read(operation, lambda conn: conn.execute(_STATE_VALUES).all())
        return {key: value for key, value in rows}

    def _set_state_value(self, operation: str, key: str, value: str) -> None:
        params = {"key": key, "value": value}
        self._write("state", operation, lambda conn: conn.execute(self._set_state, params))

    def get_pd_state(self) -> str:
        """``UNINITIALIZED`` until :meth:`set_initialized`, else the stored state."""
        values = self._state_values("get_pd_state")
        if values.get(_INITIALIZED_KEY) != "true":
            return ProcessDispatcherState.UNINITIALIZED
        return values.get(_PD_STATE_KEY, ProcessDispatcherState.UNINITIALIZED)

    def set_pd_state(self, state: str) -> None:
        self._set_state_value("set_pd_state", _PD_STATE_KEY, state)

    def is_system_boot(self) -> bool:
        return self._state_values("is_system_boot").get(_SYSTEM_BOOT_KEY) == "true"

    def set_system_boot(self, system_boot: bool) -> None:
        self._set_state_value(
            "set_system_boot", _SYSTEM_BOOT_KEY, "true" if system_boot else "false"
        )

    def is_initialized(self) -> bool:
        return self._state_values("is_initialized").get(_INITIALIZED_KEY) == "true"

    def set_initialized(self) -> None:
        self._set_state_value("set_initialized", _INITIALIZED_KEY, "true")

    def is_boot_init_pending(self) -> bool:
        return self._state_values("is_boot_init_pending").get(_BOOT_PENDING_KEY) == "true"

    def begin_system_boot(self) -> None:
        rows = [
            {"key": _SYSTEM_BOOT_KEY, "value": "true"},
            {"key": _INITIALIZED_KEY, "value": "false"},
            {"key": _BOOT_PENDING_KEY, "value": "true"},
        ]
        self._write("state", "begin_system_boot", lambda conn: self._state_rows(conn, rows))

    def finish_initialization(self, state: str) -> None:
        rows = [
            {"key": _PD_STATE_KEY, "value": state},
            {"key": _INITIALIZED_KEY, "value": "true"},
            {"key": _BOOT_PENDING_KEY, "value": "false"},
        ]
        self._write("state", "finish_initialization", lambda conn: self._state_rows(conn, rows))

    def _state_rows(self, conn: Connection, rows: list[dict[str, str]]) -> None:
        """Write several ``pd_state`` values in one transaction."""
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="READ COMMITTED")
        else:
            conn.execution_options(**{WRITE: True})  # BEGIN IMMEDIATE
        with conn.begin():
            for row in rows:
                conn.execute(self._set_state, row)

    def claim_owner(self, owner: str) -> str:
        params = {"key": _OWNER_KEY, "value": owner}
        with self._translated("claim_owner"), self._connect("claim_owner") as conn:
            conn.execute(self._claim_state, params)
        return self._state_values("claim_owner").get(_OWNER_KEY, owner)

    # -- group deadlines (kept in pd_state: no schema change) --------------------------
    def set_group_expiry(self, group: str, expires_at: float | None) -> None:
        key = _GROUP_EXPIRY_PREFIX + group
        if expires_at is not None:
            self._set_state_value("set_group_expiry", key, repr(float(expires_at)))
            return
        params = {"key": key}
        self._write(
            "state", "set_group_expiry", lambda conn: conn.execute(_FORGET_STATE_VALUE, params)
        )

    def list_group_expiries(self) -> dict[str, float]:
        rows = self._read(
            "list_group_expiries", lambda conn: conn.execute(_GROUP_EXPIRY_VALUES).all()
        )
        start = len(_GROUP_EXPIRY_PREFIX)
        return {key[start:]: float(value) for key, value in rows}

    # -- processes the matchmaker set aside (kept in pd_state: no schema change) -------
    def record_set_aside(self, upid: str, record: dict[str, Any]) -> None:
        self._set_state_value("record_set_aside", _SET_ASIDE_PREFIX + upid, dumps(record))

    def list_set_aside(self) -> dict[str, dict[str, Any]]:
        rows = self._read("list_set_aside", lambda conn: conn.execute(_SET_ASIDE_VALUES).all())
        start = len(_SET_ASIDE_PREFIX)
        return {key[start:]: jsontree.loads(value) for key, value in rows}
