"""The ``Store`` interface: everything the dispatcher keeps, behind one protocol.

Implementations: :mod:`dispatcher.store.memory` (the in-process fake for unit
tests) and :mod:`dispatcher.store.sql` (SQLAlchemy: SQLite or PostgreSQL). One
contract test suite runs against both.

Rules every implementation follows:

* ``get_*`` return deep copies; mutating a returned record changes nothing until
  it is written back.
* ``add_*`` of an existing key raises ``WriteConflictError``; on success the
  record's ``version`` becomes 1.
* ``update_*`` of versioned records (process, resource, node, VM) succeeds only when
  the record's ``version`` equals the stored one; it then increments both.
  A stale version raises ``WriteConflictError``; a missing record ``NotFoundError``.
* Definitions are not versioned: update and remove of a missing one raise
  ``NotFoundError``.
* The queue is an ordered list of ``(upid, round)``; duplicates are allowed;
  ``remove_queued`` removes the oldest matching entry or raises ``NotFoundError``.
* Database failures a retry may fix raise ``StoreError``; no library exception
  leaves the store.
* While a request is pending (:data:`dispatcher.store.applied.pending_request`),
  the first successful ``add_``/``update_``/``remove_`` of a definition or process
  (``add_process_queued`` included) of the pending kind also stores the
  :class:`~dispatcher.store.applied.AppliedRequest`, in the same transaction; an
  id stored already makes that write raise ``WriteConflictError`` and change
  nothing.
* After each committed write the store calls its listeners with the kind of
  record written (``"definition"``, ``"process"``, ``"queue"``, ``"resource"``,
  ``"node"``, ``"vm"``, ``"engine"``, ``"state"``, ``"applied"``), in the writing
  thread. Listeners must return quickly and must not raise.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Final, Protocol

from dispatcher.model import VM, Definition, Node, Process, Resource
from dispatcher.selectors import ProcessFilter
from dispatcher.store.applied import AppliedRequest

__all__ = ["EVENT_KEYS", "ChangeListener", "Store"]

#: The keys of a stored process event, besides the ``id`` the store gives it.
EVENT_KEYS: Final = (
    "upid",
    "round",
    "time",
    "state",
    "reason",
    "agent",
    "node",
    "exit_code",
    "signal",
    "output",
)

ChangeListener = Callable[[str], None]


class Store(Protocol):
    # -- lifecycle -------------------------------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(kind)`` after every committed write made through this store."""

    def close(self) -> None:
        """Release connections."""

    # -- definitions ----------------------------------------------------------------
    def add_definition(self, definition: Definition) -> None: ...
    def get_definition(self, definition_id: str) -> Definition | None: ...
    def update_definition(self, definition: Definition) -> None: ...
    def remove_definition(self, definition_id: str) -> None: ...
    def list_definition_ids(self) -> list[str]: ...

    # -- processes ------------------------------------------------------------------
    def add_process(self, process: Process) -> None: ...
    def add_process_queued(self, process: Process) -> None:
        """Add ``process`` and append ``(upid, round)`` to the queue, atomically.

        Either both are written or neither (an existing upid raises
        ``WriteConflictError`` and queues nothing). Listeners are called with
        ``"process"``, then ``"queue"``. A concurrent reader never sees the process
        without its queue entry, so a ``terminate_process`` that ends it removes
        the entry too.
        """

    def get_process(self, upid: str) -> Process | None: ...
    def update_process(self, process: Process) -> None: ...
    def list_processes(self, states: Collection[str] | None = None) -> list[Process]:
        """All processes (optionally only those in ``states``), in creation order."""

    def list_process_dicts(self, selected: ProcessFilter | None = None) -> list[dict[str, Any]]:
        """``[p.to_dict() for p in list_processes()]``, built without the records.

        The dicts are fresh (nothing is shared with the store or between dicts);
        this is the listing ``describe_processes`` and ``dump`` send.

        Args:
            selected: only the processes this filter selects (``None`` or an empty
                filter: all). States, engine, group and the prefixes narrow the
                query; the label selector is checked on what it returns.
        """

    # -- queue ----------------------------------------------------------------------
    def enqueue(self, upid: str, round_: int) -> None: ...
    def remove_queued(self, upid: str, round_: int) -> None: ...
    def list_queued(self) -> list[tuple[str, int]]:
        """Queue entries, oldest first."""

    def clear_queue(self) -> None: ...

    # -- resources (eeagents) -------------------------------------------------------
    def add_resource(self, resource: Resource) -> None: ...
    def get_resource(self, resource_id: str) -> Resource | None: ...
    def update_resource(self, resource: Resource) -> None: ...
    def remove_resource(self, resource_id: str) -> None: ...
    def list_resources(self) -> list[Resource]: ...

    # -- nodes ----------------------------------------------------------------------
    def add_node(self, node: Node) -> None: ...
    def get_node(self, node_id: str) -> Node | None: ...
    def update_node(self, node: Node) -> None: ...
    def remove_node(self, node_id: str) -> None: ...
    def list_nodes(self) -> list[Node]: ...

    # -- VMs: nodes the provisioner launched (keyed by node id) --------------------
    def add_vm(self, vm: VM) -> None: ...
    def get_vm(self, node_id: str) -> VM | None: ...
    def update_vm(self, vm: VM) -> None: ...
    def remove_vm(self, node_id: str) -> None: ...
    def list_vms(self) -> list[VM]:
        """All VMs, ordered by node id."""

    # -- engines added with add_engine ---------------------------------------------
    def add_engine(self, engine_id: str, spec: dict[str, object]) -> None:
        """Persist an engine; an existing id raises ``WriteConflictError``."""

    def list_engines(self) -> dict[str, dict[str, object]]: ...

    # -- applied requests (see dispatcher.store.applied) ----------------------------
    def get_applied_request(self, request_id: str) -> AppliedRequest | None:
        """The record of an applied request, or ``None``."""

    def prune_applied_requests(self, before: float, keep: int) -> int:
        """Forget requests applied before ``before``, and all but the newest ``keep``.

        Returns:
            How many records were removed.
        """

    # -- process events (see dispatcher.events) ---------------------------------------
    def add_process_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Append events (dicts with the keys of :data:`EVENT_KEYS`), in order."""

    def list_process_events(self, upid: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` events of ``upid``, oldest first, each with its ``id``."""

    def prune_process_events(self, per_process: int, total: int) -> int:
        """Keep the newest ``per_process`` events of each process and the newest
        ``total`` overall.

        Returns:
            How many events were removed.
        """

    # -- dispatcher-wide state ------------------------------------------------------
    def get_pd_state(self) -> str:
        """``UNINITIALIZED`` until :meth:`set_initialized`, else the stored state."""

    def set_pd_state(self, state: str) -> None: ...
    def is_system_boot(self) -> bool: ...
    def set_system_boot(self, system_boot: bool) -> None: ...
    def is_initialized(self) -> bool: ...
    def set_initialized(self) -> None: ...
    def is_boot_init_pending(self) -> bool:
        """True from :meth:`begin_system_boot` until :meth:`finish_initialization`."""

    def begin_system_boot(self) -> None:
        """Set the system-boot flag and mark the dispatcher for a new initialisation.

        In one write: the flag is set, the dispatcher counts as ``UNINITIALIZED``,
        and :meth:`is_boot_init_pending` is True, so the next doctor runs the
        system-boot initialisation (:mod:`dispatcher.doctor`). Called with no
        dispatcher running (``pd-dispatcher system-boot begin``).
        """

    def finish_initialization(self, state: str) -> None:
        """Store ``state``, mark the dispatcher initialised and clear the pending
        boot initialisation, in one write (the doctor's last step)."""

    def claim_owner(self, owner: str) -> str:
        """Record ``owner`` as the system the database belongs to, unless one is
        recorded already (atomically: of two claims, one wins).

        Returns:
            The recorded owner: ``owner``, or the one that claimed it first.
        """

    # -- group deadlines (see dispatcher.culler) --------------------------------------
    def set_group_expiry(self, group: str, expires_at: float | None) -> None:
        """Record that ``group`` expires at ``expires_at`` (epoch seconds), replacing an
        earlier deadline; ``None`` forgets it. Listeners hear ``"state"``."""

    def list_group_expiries(self) -> dict[str, float]:
        """Every group deadline, by group, ordered by group."""

    # -- processes the matchmaker set aside (shown by dump) ---------------------------
    def record_set_aside(self, upid: str, record: dict[str, Any]) -> None:
        """Remember why ``upid`` was set aside (replaces an earlier record of it)."""

    def list_set_aside(self) -> dict[str, dict[str, Any]]:
        """Every set-aside record, by upid, ordered by upid."""
