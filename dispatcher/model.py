"""The stored records: definitions, processes, resources (eeagents), nodes, engines, VMs.

Records are plain dataclasses. Versioned records (process, resource, node) carry
``version``: ``0`` for a record not yet stored; the store sets it on every write
and refuses a write whose version is stale (optimistic concurrency). ``to_dict``
gives the legacy wire shape (without the version).

Processes are keyed by ``upid`` alone (the legacy ``owner`` was always ``None``);
assignment keys are ``(upid, round)`` and show on the wire as
``[None, upid, round]`` lists, as the legacy ``dump`` did.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final, TypeVar

from dashi.jsontree import tree_copy
from pdcommon.states import ExecutionResourceState, ProcessState

__all__ = [
    "VM",
    "Definition",
    "EngineRecord",
    "Node",
    "Process",
    "Resource",
    "add_derived_process_keys",
]

#: The restart mode of a process scheduled without one (legacy: ``ABNORMAL``).
DEFAULT_RESTART_MODE: Final = "ABNORMAL"


def add_derived_process_keys(data: dict[str, Any]) -> None:
    """Add the keys a process's wire record derives from its fields (new, additive):
    ``effective_restart_mode``, the restart mode that applies (never blank)."""
    data["effective_restart_mode"] = data["restart_mode"] or DEFAULT_RESTART_MODE
    # group and labels are additive keys shown only when set: a legacy client sees
    # exactly the keys it knows for a process without them.
    for key in _WHEN_SET_KEYS:
        if data[key] is None:
            del data[key]


#: The process record keys present only when set (see :mod:`dispatcher.selectors`).
_WHEN_SET_KEYS: Final = ("group", "labels")


@dataclass
class Definition:
    definition_id: str
    definition_type: str | None = None
    executable: Any = None
    name: str | None = None
    description: str | None = None
    version: Any = None  # legacy field, always None
    #: New (optional): the ``max_runtime_seconds`` of the processes scheduled with
    #: this definition and without their own (None: no default).
    max_runtime_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The legacy record, a deep copy (``schedule_process`` copies it into each process).

        The six legacy keys, and ``max_runtime_seconds`` only when it is set (an
        additive key: a legacy client sees exactly the legacy record).

        Built with :func:`~dashi.jsontree.tree_copy` rather than
        ``deepcopy(asdict(...))``, which costs several times more for the same
        result and recurses once per level of nesting.
        """
        values = self.__dict__
        data = {name: tree_copy(values[name]) for name in _LEGACY_DEFINITION_FIELDS}
        if self.max_runtime_seconds is not None:
            data["max_runtime_seconds"] = self.max_runtime_seconds
        return data


@dataclass
class Process:
    upid: str
    definition: dict[str, Any]
    name: str | None = None
    state: str = ProcessState.UNSCHEDULED
    round: int = 0
    configuration: Any = field(default_factory=dict)
    constraints: dict[str, Any] = field(default_factory=dict)
    subscribers: list[Any] | None = None
    queueing_mode: str | None = None
    restart_mode: str | None = None
    node_exclusive: str | None = None
    assigned: str | None = None
    hostname: str | None = None
    starts: int = 0
    start_times: list[float] = field(default_factory=list)
    dispatches: int = 0
    dispatch_times: list[float] = field(default_factory=list)
    # -- outcome of the latest round (additive keys; docs/rpc.md "Process records") --
    #: The exit code of the last round that ended by itself (None: none, or killed).
    exit_code: int | None = None
    #: The signal that killed the last round, when the agent knows it.
    signal: int | None = None
    #: Why the last round ended, or why the process is ending (the agent's words,
    #: or the dispatcher's: "restart limit reached ...", "max runtime exceeded ...").
    reason: str | None = None
    #: Epoch seconds the current (or last) round entered ``500-RUNNING``.
    started_at: float | None = None
    #: Epoch seconds the last round ended.
    ended_at: float | None = None
    #: Rounds started by the restart policy (after a failure or an exit).
    restarts: int = 0
    #: While backing off between restarts: the earliest epoch seconds of the next start.
    next_restart_at: float | None = None
    #: Seconds a round may run before the dispatcher terminates it (None: no limit).
    max_runtime_seconds: float | None = None
    #: The process's own restart policy (``schedule_process(restart_policy=...)``).
    restart_policy: dict[str, Any] | None = None
    #: Epoch seconds of the recent failures the restart limit counts.
    failure_times: list[float] = field(default_factory=list)
    #: New (optional): the group the process belongs to (see :mod:`dispatcher.selectors`).
    group: str | None = None
    #: New (optional): string keys to string values (None: no labels).
    labels: dict[str, str] | None = None
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The full legacy record (``describe_process``, ``dump``), a deep copy.

        Built field by field with :func:`~dashi.jsontree.tree_copy` rather
        than ``deepcopy(asdict(...))``: ``describe_processes`` and ``dump`` convert
        every stored process, and the generic copies cost ~100 us per record (and
        recurse once per level of nesting).
        """
        values = self.__dict__
        data = {name: tree_copy(values[name]) for name in _PROCESS_WIRE_FIELDS}
        data["owner"] = None
        add_derived_process_keys(data)
        return data

    def copy(self) -> Process:
        """A deep copy (``copy.deepcopy`` without its recursion: any depth works)."""
        return _copy_record(self)

    def summary(self) -> dict[str, Any]:
        """The legacy "process dict": upid, state, round, assigned."""
        return {
            "upid": self.upid,
            "state": self.state,
            "round": self.round,
            "assigned": self.assigned,
        }


#: The legacy ``Definition`` fields, in declaration order (the wire record's keys).
_LEGACY_DEFINITION_FIELDS: Final = tuple(
    f.name for f in fields(Definition) if f.name != "max_runtime_seconds"
)
#: ``Process`` fields in declaration order, without ``version`` (not on the wire).
_PROCESS_WIRE_FIELDS: Final = tuple(f.name for f in fields(Process) if f.name != "version")


_Record = TypeVar("_Record")


def _copy_record(record: _Record) -> _Record:
    """A deep copy of a record dataclass, field by field with :func:`tree_copy`."""
    clone: _Record = object.__new__(type(record))
    clone.__dict__.update({name: tree_copy(value) for name, value in record.__dict__.items()})
    return clone


def _wire_dict(record: Any) -> dict[str, Any]:
    """``record``'s fields but ``version``, in declaration order, deep-copied
    (``deepcopy(asdict(...))`` without its recursion)."""
    values = record.__dict__
    return {f.name: tree_copy(values[f.name]) for f in fields(record) if f.name != "version"}


@dataclass
class Resource:
    """An eeagent: ``slot_count`` slots on one node."""

    resource_id: str
    node_id: str
    slot_count: int
    state: str = ExecutionResourceState.OK
    properties: dict[str, Any] = field(default_factory=dict)
    #: ``(upid, round)`` pairs placed on this agent.
    assigned: list[tuple[str, int]] = field(default_factory=list)
    last_heartbeat: str | None = None
    version: int = 0

    @property
    def available_slots(self) -> int:
        return max(0, self.slot_count - len(self.assigned))

    def to_dict(self) -> dict[str, Any]:
        data = _wire_dict(self)
        data["assigned"] = [[None, upid, round_] for upid, round_ in self.assigned]
        return data


@dataclass
class Node:
    """A VM (or a local group of agents) that hosts resources."""

    node_id: str
    domain_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    resources: list[str] = field(default_factory=list)
    node_exclusive: list[str] = field(default_factory=list)
    state_time: float = 0.0
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _wire_dict(self)


@dataclass
class EngineRecord:
    """An engine added at run time with ``add_engine`` (persisted)."""

    engine_id: str
    spec: dict[str, Any]


@dataclass
class VM:
    """A node the provisioner launched or adopted: a cloud VM, or a local group of agents.

    Versioned like processes. ``state`` is one of
    :class:`dispatcher.provisioner.VMState` (``requested``, ``pending``, ``running``,
    ``terminating``, ``terminated``, ``failed``); ``final_state`` is where a
    ``terminating`` node goes once destroyed (``terminated``, or ``failed`` when it
    is destroyed because it failed). ``node_id`` is also the id of its
    :class:`Node` record and the ``node_id`` its agents send in heartbeats.
    """

    node_id: str
    engine_id: str
    #: The provisioner site (``provisioner.sites``) it was launched on.
    site: str
    state: str = "requested"
    final_state: str = "terminated"
    #: The provider's id (a cloud instance id; the node id for local nodes).
    provider_id: str | None = None
    #: Facts from the provider (addresses, pids...), also given to its Node record.
    properties: dict[str, Any] = field(default_factory=dict)
    #: Why it is terminating, terminated or failed.
    reason: str | None = None
    #: The last provider error met while creating or destroying it.
    last_error: str | None = None
    #: Failed create (or destroy) attempts so far.
    attempts: int = 0
    #: Epoch seconds before which the next attempt must not start (backoff).
    next_attempt: float = 0.0
    requested_at: float = 0.0
    #: Epoch seconds of the last state change.
    state_time: float = 0.0
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _wire_dict(self)
