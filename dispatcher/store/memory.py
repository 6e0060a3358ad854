"""An in-process :class:`~dispatcher.store.base.Store`: the fake for unit tests.

Capabilities: every rule of :mod:`dispatcher.store.base` (versions, conflicts,
FIFO queue with duplicates, listeners), thread-safe behind one re-entrant lock.
Nothing is persisted; there is no URL. Records are copied in and out, and JSON
fields go through a JSON round trip exactly as in the SQL store (see
:mod:`dispatcher.store._codec`), so a test passing here behaves the same on SQL.

Listeners run in the writing thread after the write is applied and after the
lock is released, so a listener may read the store.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Generic, TypeVar

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.model import VM, Definition, Node, Process, Resource
from dispatcher.selectors import ProcessFilter
from dispatcher.store._codec import (
    DEFINITION,
    NODE,
    PROCESS,
    RESOURCE,
    VM_LAYOUT,
    Layout,
    gc_paused,
    json_copy,
)
from dispatcher.store.applied import AppliedRequest, claim, mark_recorded
from dispatcher.store.base import EVENT_KEYS, ChangeListener
from pdcommon.states import ProcessDispatcherState

__all__ = ["MemoryStore"]

_R = TypeVar("_R", bound=Definition | Process | Resource | Node | VM)


class _Table(Generic[_R]):
    """Records of one type, each kept as its scalar fields and its JSON-encoded fields.

    Not locked: the store calls it under its own lock.
    """

    def __init__(self, layout: Layout[_R], what: str) -> None:
        self.layout = layout
        self.what = what
        self.rows: dict[str, tuple[tuple[Any, ...], str]] = {}  # insertion = creation order
        fields = layout.scalar_fields
        self._version = fields.index("version") if layout.cls is not Definition else None

    def _put(self, key: str, record: _R) -> None:
        self.rows[key] = (self.layout.scalars(record), self.layout.encode(record))

    def get(self, key: str) -> _R | None:
        row = self.rows.get(key)
        return None if row is None else self.layout.build_from_arrays([row])[0]

    def list(self, keys: Collection[str] | None = None) -> list[_R]:
        rows = self.rows if keys is None else {k: self.rows[k] for k in keys}
        return self.layout.build_from_arrays(list(rows.values()))

    def add(self, key: str, record: _R) -> None:
        if key in self.rows:
            raise WriteConflictError(f"{self.what} {key!r} exists")
        if self._version is None:
            self._put(key, record)
            return
        version = record.version
        record.version = 1
        try:
            self._put(key, record)
        except BaseException:
            record.version = version
            raise

    def update(self, key: str, record: _R) -> None:
        row = self.rows.get(key)
        if row is None:
            raise NotFoundError(f"{self.what} {key!r} not found")
        if self._version is None:
            self._put(key, record)
            return
        stored = row[0][self._version]
        if stored != record.version:
            raise WriteConflictError(
                f"{self.what} {key!r} changed: version {record.version}, stored {stored}"
            )
        record.version = stored + 1
        try:
            self._put(key, record)
        except BaseException:
            record.version = stored
            raise

    def remove(self, key: str) -> None:
        if self.rows.pop(key, None) is None:
            raise NotFoundError(f"{self.what} {key!r} not found")


class MemoryStore:
    """A thread-safe, in-memory store; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._listeners: list[ChangeListener] = []
        self._definitions = _Table(DEFINITION, "definition")
        self._processes = _Table(PROCESS, "process")
        self._resources = _Table(RESOURCE, "resource")
        self._nodes = _Table(NODE, "node")
        self._vms = _Table(VM_LAYOUT, "vm")
        self._queue: list[tuple[str, int]] = []
        self._engines: dict[str, dict[str, object]] = {}
        self._pd_state: str = ProcessDispatcherState.UNINITIALIZED
        self._system_boot = False
        self._initialized = False
        self._boot_init_pending = False
        self._owner: str | None = None
        self._applied: dict[str, AppliedRequest] = {}
        self._set_aside: dict[str, dict[str, Any]] = {}
        self._group_expiries: dict[str, float] = {}
        self._events: list[dict[str, Any]] = []
        self._event_ids = 0

    # -- lifecycle -------------------------------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(kind)`` after every write made through this store."""
        with self._lock:
            self._listeners.append(listener)

    def close(self) -> None:
        """Nothing to release; the data stays readable."""

    @contextmanager
    def _writing(self, kind: str) -> Iterator[None]:
        """Hold the lock for a write, then notify listeners once it succeeded."""
        with self._lock:
            yield
            listeners = list(self._listeners)
        for listener in listeners:
            listener(kind)

    @contextmanager
    def _applying(self, kind: str, record: Any) -> Iterator[None]:
        """Hold the lock for a write that also records the pending request, if any."""
        with self._writing(kind):
            applied = claim(kind, record)
            if applied is not None and applied.request_id in self._applied:
                raise WriteConflictError(f"request {applied.request_id!r} was applied already")
            yield
            if applied is not None:
                self._applied[applied.request_id] = AppliedRequest(
                    applied.request_id,
                    applied.op,
                    applied.digest,
                    json_copy(applied.result),
                    applied.applied_at,
                )
                mark_recorded()

    # -- definitions ----------------------------------------------------------------
    def add_definition(self, definition: Definition) -> None:
        with self._applying("definition", definition):
            self._definitions.add(definition.definition_id, definition)

    def get_definition(self, definition_id: str) -> Definition | None:
        with self._lock:
            return self._definitions.get(definition_id)

    def update_definition(self, definition: Definition) -> None:
        with self._applying("definition", definition):
            self._definitions.update(definition.definition_id, definition)

    def remove_definition(self, definition_id: str) -> None:
        with self._applying("definition", None):
            self._definitions.remove(definition_id)

    def list_definition_ids(self) -> list[str]:
        """Definition ids, sorted."""
        with self._lock:
            return sorted(self._definitions.rows)

    # -- processes ------------------------------------------------------------------
    def add_process(self, process: Process) -> None:
        with self._applying("process", process):
            self._processes.add(process.upid, process)

    def add_process_queued(self, process: Process) -> None:
        """Add ``process`` and append ``(upid, round)`` to the queue, atomically."""
        with self._applying("process", process):  # no reader sees one without the other
            self._processes.add(process.upid, process)
            self._queue.append((process.upid, process.round))
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener("queue")

    def get_process(self, upid: str) -> Process | None:
        with self._lock:
            return self._processes.get(upid)

    def update_process(self, process: Process) -> None:
        with self._applying("process", process):
            self._processes.update(process.upid, process)

    def list_processes(self, states: Collection[str] | None = None) -> list[Process]:
        """All processes (optionally only those in ``states``), in creation order."""
        state_index = PROCESS.scalar_fields.index("state")
        with self._lock, gc_paused():  # the listing may hold 100,000 records: see _codec
            if states is None:
                return self._processes.list()
            wanted = frozenset(states)
            keys = [k for k, (sc, _) in self._processes.rows.items() if sc[state_index] in wanted]
            return self._processes.list(keys)

    def list_process_dicts(self, selected: ProcessFilter | None = None) -> list[dict[str, Any]]:
        """Every process's ``to_dict()``, in creation order, built without the records
        (only those ``selected``, narrowed on the scalar fields first)."""
        with self._lock, gc_paused():
            rows = list(self._processes.rows.values())
            if selected is None or selected.empty:
                return PROCESS.wire_dicts_from_arrays(rows)
            rows = [row for row in rows if _scalars_match(selected, row[0])]
            return [d for d in PROCESS.wire_dicts_from_arrays(rows) if selected.matches(d)]

    # -- queue ----------------------------------------------------------------------
    def enqueue(self, upid: str, round_: int) -> None:
        with self._writing("queue"):
            self._queue.append((upid, round_))

    def remove_queued(self, upid: str, round_: int) -> None:
        with self._writing("queue"):
            try:
                self._queue.remove((upid, round_))  # the first, i.e. oldest, match
            except ValueError:
                raise NotFoundError(f"queue entry ({upid!r}, {round_}) not found") from None

    def list_queued(self) -> list[tuple[str, int]]:
        """Queue entries, oldest first."""
        with self._lock:
            return list(self._queue)

    def clear_queue(self) -> None:
        with self._writing("queue"):
            self._queue.clear()

    # -- resources (eeagents) -------------------------------------------------------
    def add_resource(self, resource: Resource) -> None:
        with self._writing("resource"):
            self._resources.add(resource.resource_id, resource)

    def get_resource(self, resource_id: str) -> Resource | None:
        with self._lock:
            return self._resources.get(resource_id)

    def update_resource(self, resource: Resource) -> None:
        with self._writing("resource"):
            self._resources.update(resource.resource_id, resource)

    def remove_resource(self, resource_id: str) -> None:
        with self._writing("resource"):
            self._resources.remove(resource_id)

    def list_resources(self) -> list[Resource]:
        """All resources, ordered by id."""
        with self._lock:
            return self._resources.list(sorted(self._resources.rows))

    # -- nodes ----------------------------------------------------------------------
    def add_node(self, node: Node) -> None:
        with self._writing("node"):
            self._nodes.add(node.node_id, node)

    def get_node(self, node_id: str) -> Node | None:
        with self._lock:
            return self._nodes.get(node_id)

    def update_node(self, node: Node) -> None:
        with self._writing("node"):
            self._nodes.update(node.node_id, node)

    def remove_node(self, node_id: str) -> None:
        with self._writing("node"):
            self._nodes.remove(node_id)

    def list_nodes(self) -> list[Node]:
        """All nodes, ordered by id."""
        with self._lock:
            return self._nodes.list(sorted(self._nodes.rows))

    # -- VMs (provisioned nodes) ---------------------------------------------------
    def add_vm(self, vm: VM) -> None:
        with self._writing("vm"):
            self._vms.add(vm.node_id, vm)

    def get_vm(self, node_id: str) -> VM | None:
        with self._lock:
            return self._vms.get(node_id)

    def update_vm(self, vm: VM) -> None:
        with self._writing("vm"):
            self._vms.update(vm.node_id, vm)

    def remove_vm(self, node_id: str) -> None:
        with self._writing("vm"):
            self._vms.remove(node_id)

    def list_vms(self) -> list[VM]:
        """All VMs, ordered by node id."""
        with self._lock:
            return self._vms.list(sorted(self._vms.rows))

    # -- engines added with add_engine ---------------------------------------------
    def add_engine(self, engine_id: str, spec: dict[str, object]) -> None:
        """Persist an engine; an existing id raises ``WriteConflictError``."""
        stored = json_copy(spec)
        with self._writing("engine"):
            if engine_id in self._engines:
                raise WriteConflictError(f"engine {engine_id!r} exists")
            self._engines[engine_id] = stored

    def list_engines(self) -> dict[str, dict[str, object]]:
        """All engines added with :meth:`add_engine`, ordered by id."""
        with self._lock:
            return {key: copy.deepcopy(self._engines[key]) for key in sorted(self._engines)}

    # -- applied requests -----------------------------------------------------------
    def get_applied_request(self, request_id: str) -> AppliedRequest | None:
        with self._lock:
            applied = self._applied.get(request_id)
            if applied is None:
                return None
            return AppliedRequest(
                applied.request_id,
                applied.op,
                applied.digest,
                json_copy(applied.result),
                applied.applied_at,
            )

    def prune_applied_requests(self, before: float, keep: int) -> int:
        """Forget requests applied before ``before``, and all but the newest ``keep``."""
        with self._lock:
            newest = sorted(self._applied.values(), key=lambda a: a.applied_at, reverse=True)
            gone = [
                a.request_id for i, a in enumerate(newest) if i >= keep or a.applied_at < before
            ]
            for request_id in gone:
                del self._applied[request_id]
            return len(gone)

    # -- process events -------------------------------------------------------------
    def add_process_events(self, events: Sequence[dict[str, Any]]) -> None:
        rows = [{key: json_copy(event.get(key)) for key in EVENT_KEYS} for event in events]
        with self._lock:
            for row in rows:
                self._event_ids += 1
                self._events.append({"id": self._event_ids, **row})

    def list_process_events(self, upid: str, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            mine = [event for event in self._events if event["upid"] == upid]
            return [json_copy(event) for event in mine[-limit:]] if limit > 0 else []

    def prune_process_events(self, per_process: int, total: int) -> int:
        with self._lock:
            seen: dict[str, int] = {}
            kept: list[dict[str, Any]] = []
            for event in reversed(self._events):
                count = seen.get(event["upid"], 0)
                if count < per_process and len(kept) < total:
                    kept.append(event)
                seen[event["upid"]] = count + 1
            removed = len(self._events) - len(kept)
            self._events = kept[::-1]
            return removed

    # -- dispatcher-wide state ------------------------------------------------------
    def get_pd_state(self) -> str:
        """``UNINITIALIZED`` until :meth:`set_initialized`, else the stored state."""
        with self._lock:
            if not self._initialized:
                return ProcessDispatcherState.UNINITIALIZED
            return self._pd_state

    def set_pd_state(self, state: str) -> None:
        with self._writing("state"):
            self._pd_state = state

    def is_system_boot(self) -> bool:
        with self._lock:
            return self._system_boot

    def set_system_boot(self, system_boot: bool) -> None:
        with self._writing("state"):
            self._system_boot = bool(system_boot)

    def is_initialized(self) -> bool:
        with self._lock:
            return self._initialized

    def set_initialized(self) -> None:
        with self._writing("state"):
            self._initialized = True

    def is_boot_init_pending(self) -> bool:
        with self._lock:
            return self._boot_init_pending

    def begin_system_boot(self) -> None:
        with self._writing("state"):
            self._system_boot = True
            self._initialized = False
            self._boot_init_pending = True

    def finish_initialization(self, state: str) -> None:
        with self._writing("state"):
            self._pd_state = state
            self._initialized = True
            self._boot_init_pending = False

    def claim_owner(self, owner: str) -> str:
        with self._lock:
            if self._owner is None:
                self._owner = owner
            return self._owner

    # -- processes the matchmaker set aside -----------------------------------------
    def set_group_expiry(self, group: str, expires_at: float | None) -> None:
        with self._writing("state"):
            if expires_at is None:
                self._group_expiries.pop(group, None)
            else:
                self._group_expiries[group] = float(expires_at)

    def list_group_expiries(self) -> dict[str, float]:
        with self._lock:
            return {g: self._group_expiries[g] for g in sorted(self._group_expiries)}

    def record_set_aside(self, upid: str, record: dict[str, Any]) -> None:
        stored = json_copy(record)
        with self._writing("state"):
            self._set_aside[upid] = stored

    def list_set_aside(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {upid: json_copy(self._set_aside[upid]) for upid in sorted(self._set_aside)}


_SCALAR_INDEX: Final = {name: i for i, name in enumerate(PROCESS.scalar_fields)}


def _scalars_match(selected: ProcessFilter, scalars: Sequence[Any]) -> bool:
    """The narrowing the SQL store does in its query, on a stored row's scalars."""
    if selected.states is not None and scalars[_SCALAR_INDEX["state"]] not in selected.states:
        return False
    if selected.group is not None and scalars[_SCALAR_INDEX["group"]] != selected.group:
        return False
    name = scalars[_SCALAR_INDEX["name"]]
    if selected.name_prefix is not None and not (
        isinstance(name, str) and name.startswith(selected.name_prefix)
    ):
        return False
    upid: str = scalars[_SCALAR_INDEX["upid"]]
    return selected.upid_prefix is None or upid.startswith(selected.upid_prefix)
