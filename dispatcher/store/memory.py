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
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TypeVar

from dispatcher.errors import NotFoundError, WriteConflictError
from dispatcher.model import Definition, Node, Process, Resource
from dispatcher.states import ProcessDispatcherState
from dispatcher.store._codec import clone, json_copy
from dispatcher.store.base import ChangeListener

__all__ = ["MemoryStore"]

_V = TypeVar("_V", Process, Resource, Node)


class MemoryStore:
    """A thread-safe, in-memory store; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._listeners: list[ChangeListener] = []
        self._definitions: dict[str, Definition] = {}
        self._processes: dict[str, Process] = {}  # insertion order = creation order
        self._queue: list[tuple[str, int]] = []
        self._resources: dict[str, Resource] = {}
        self._nodes: dict[str, Node] = {}
        self._engines: dict[str, dict[str, object]] = {}
        self._pd_state: str = ProcessDispatcherState.UNINITIALIZED
        self._system_boot = False
        self._initialized = False

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

    # -- definitions ----------------------------------------------------------------
    def add_definition(self, definition: Definition) -> None:
        stored = clone(definition)
        with self._writing("definition"):
            if definition.definition_id in self._definitions:
                raise WriteConflictError(f"definition {definition.definition_id!r} exists")
            self._definitions[definition.definition_id] = stored

    def get_definition(self, definition_id: str) -> Definition | None:
        with self._lock:
            found = self._definitions.get(definition_id)
            return None if found is None else clone(found)

    def update_definition(self, definition: Definition) -> None:
        stored = clone(definition)
        with self._writing("definition"):
            if definition.definition_id not in self._definitions:
                raise NotFoundError(f"definition {definition.definition_id!r} not found")
            self._definitions[definition.definition_id] = stored

    def remove_definition(self, definition_id: str) -> None:
        with self._writing("definition"):
            if self._definitions.pop(definition_id, None) is None:
                raise NotFoundError(f"definition {definition_id!r} not found")

    def list_definition_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._definitions)

    # -- versioned records: shared logic ---------------------------------------------
    @staticmethod
    def _add(table: dict[str, _V], key: str, record: _V, what: str) -> None:
        if key in table:
            raise WriteConflictError(f"{what} {key!r} exists")
        stored = clone(record)
        stored.version = 1
        table[key] = stored
        record.version = 1

    @staticmethod
    def _update(table: dict[str, _V], key: str, record: _V, what: str) -> None:
        current = table.get(key)
        if current is None:
            raise NotFoundError(f"{what} {key!r} not found")
        if current.version != record.version:
            raise WriteConflictError(
                f"{what} {key!r} changed: version {record.version}, stored {current.version}"
            )
        stored = clone(record)
        stored.version = record.version + 1
        table[key] = stored
        record.version = stored.version

    @staticmethod
    def _remove(table: dict[str, _V], key: str, what: str) -> None:
        if table.pop(key, None) is None:
            raise NotFoundError(f"{what} {key!r} not found")

    # -- processes ------------------------------------------------------------------
    def add_process(self, process: Process) -> None:
        with self._writing("process"):
            self._add(self._processes, process.upid, process, "process")

    def get_process(self, upid: str) -> Process | None:
        with self._lock:
            found = self._processes.get(upid)
            return None if found is None else clone(found)

    def update_process(self, process: Process) -> None:
        with self._writing("process"):
            self._update(self._processes, process.upid, process, "process")

    def list_processes(self, states: Collection[str] | None = None) -> list[Process]:
        """All processes (optionally only those in ``states``), in creation order."""
        with self._lock:
            wanted = None if states is None else frozenset(states)
            return [
                clone(p) for p in self._processes.values() if wanted is None or p.state in wanted
            ]

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
            self._add(self._resources, resource.resource_id, resource, "resource")

    def get_resource(self, resource_id: str) -> Resource | None:
        with self._lock:
            found = self._resources.get(resource_id)
            return None if found is None else clone(found)

    def update_resource(self, resource: Resource) -> None:
        with self._writing("resource"):
            self._update(self._resources, resource.resource_id, resource, "resource")

    def remove_resource(self, resource_id: str) -> None:
        with self._writing("resource"):
            self._remove(self._resources, resource_id, "resource")

    def list_resources(self) -> list[Resource]:
        """All resources, ordered by id."""
        with self._lock:
            return [clone(self._resources[key]) for key in sorted(self._resources)]

    # -- nodes ----------------------------------------------------------------------
    def add_node(self, node: Node) -> None:
        with self._writing("node"):
            self._add(self._nodes, node.node_id, node, "node")

    def get_node(self, node_id: str) -> Node | None:
        with self._lock:
            found = self._nodes.get(node_id)
            return None if found is None else clone(found)

    def update_node(self, node: Node) -> None:
        with self._writing("node"):
            self._update(self._nodes, node.node_id, node, "node")

    def remove_node(self, node_id: str) -> None:
        with self._writing("node"):
            self._remove(self._nodes, node_id, "node")

    def list_nodes(self) -> list[Node]:
        """All nodes, ordered by id."""
        with self._lock:
            return [clone(self._nodes[key]) for key in sorted(self._nodes)]

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
