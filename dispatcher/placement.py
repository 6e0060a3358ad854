"""Pure placement decisions: which queued process goes to which eeagent slot.

Nothing here touches the store or the broker. :func:`plan` takes the queue
entries, the process, resource and node records as read at the start of a
matchmaking pass, and returns one :data:`Decision` per examined entry; the
:class:`~dispatcher.matchmaker.Matchmaker` then writes them. Being pure, the
planner is property-tested and benchmarked on its own.

Placement rules:

* only ``OK`` resources with free slots receive work (``available_slots =
  slot_count - len(assigned)``);
* nodes where any agent already holds a process ("occupied") come first, fullest
  first (total free slots ascending); unoccupied nodes follow, oldest first
  (``state_time``, then node id), so that the newest nodes are the ones left empty
  for retirement (first in, last out);
* within a node the agent with the most free slots wins (ties: lowest resource
  id): nodes are filled one at a time, but spread across their agents;
* a process's constraints must match the agent's properties
  (:func:`match_constraints`); its effective engine always takes part
  (:func:`effective_constraints`, never stored: docs/architecture.md,
  decision 5);
* a ``node_exclusive`` tag may appear at most once per node; tags placed in this
  pass count immediately;
* entries are examined in FIFO order; there is no priority.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.engines import EngineRegistry
from dispatcher.model import Node, Process, Resource
from dispatcher.transitions import get_queueing_decision
from pdcommon.states import ExecutionResourceState, ProcessState

__all__ = [
    "Assign",
    "Decision",
    "Drop",
    "Hold",
    "Key",
    "Plan",
    "SlotBoard",
    "Wait",
    "effective_constraints",
    "effective_engine",
    "match_constraints",
    "minimum_time_between_starts",
    "plan",
    "throttle_end_time",
]

#: A queue entry and an assignment: ``(upid, round)``.
Key = tuple[str, int]

#: The configuration key of restart throttling, globally and per process.
THROTTLE_KEY: Final = "minimum_time_between_starts"


# -- decisions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assign:
    """Reserve a slot of ``resource_id`` for the process and launch it there.

    ``recovered`` means the resource already lists ``(upid, round)``: an earlier
    pass crashed between the resource write and the process write,
    so only the process write and the launch remain.
    """

    upid: str
    round: int
    resource_id: str
    node_id: str
    recovered: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """No slot now (or a throttled restart): the process ends in ``state``.

    ``state`` is ``300-WAITING`` or ``900-REJECTED`` by the queueing mode,
    or the process's current state when it is already waiting (it is left alone).
    ``throttled_until`` is set when restart throttling, not a lack of slots, holds
    the process back: it is re-examined at that time.
    """

    upid: str
    round: int
    state: str
    throttled_until: float | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    """The entry is stale (no such process, another round, not waiting for a slot)."""

    upid: str
    round: int
    reason: str


@dataclass(frozen=True, slots=True)
class Hold:
    """The process is ``350-ASSIGNED``: awaiting its agent, not matched again."""

    upid: str
    round: int


Decision = Assign | Wait | Drop | Hold


@dataclass(slots=True)
class Plan:
    """The outcome of :func:`plan`.

    Attributes:
        decisions: one per distinct examined entry, in queue order.
        engines: the effective engine of every examined process entry (``None``
            when it has none, or a one-of list), for the needs computation.
        throttle_expiry: the earliest ``throttled_until`` among the decisions.
    """

    decisions: list[Decision] = field(default_factory=list)
    engines: dict[Key, str | None] = field(default_factory=dict)
    throttle_expiry: float | None = None


# -- constraints and engines ---------------------------------------------------------


def match_constraints(
    constraints: Mapping[str, Any] | None, properties: Mapping[str, Any] | None
) -> bool:
    """Whether an agent with ``properties`` satisfies ``constraints``.

    ``None`` constraints match anything. A constraint whose value is ``None`` is
    ignored. Otherwise the property must be present (not ``None``) and equal the
    value, or be one of the values when the value is a list or tuple. Agents
    without properties fail every non-``None`` constraint.

    Args:
        constraints: the process's effective constraints.
        properties: the agent's properties (its node's, plus ``engine`` and
            ``resource_id``).

    Returns:
        True when every constraint holds.
    """
    if not constraints:
        return True
    for key, wanted in constraints.items():
        if wanted is None:
            continue
        if properties is None:
            return False
        actual = properties.get(key)
        if actual is None:
            return False
        if isinstance(wanted, list | tuple):
            if actual not in wanted:
                return False
        elif actual != wanted:
            return False
    return True


def effective_constraints(engines: EngineRegistry, process: Process) -> dict[str, Any]:
    """The constraints the process is matched with: its own plus its engine.

    A copy; the stored constraints are never changed (docs/architecture.md,
    decision 5). An explicit
    ``engine`` constraint is kept as given, including a one-of list.
    """
    stored = process.constraints or {}
    if stored.get("engine") is not None:
        return dict(stored)
    return engines.effective_constraints(stored, process.definition)


def effective_engine(constraints: Mapping[str, Any]) -> str | None:
    """The single engine named by effective constraints, or ``None``."""
    engine = constraints.get("engine")
    return engine if isinstance(engine, str) else None


# -- restart throttling ------------------------------------------------------------


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


def minimum_time_between_starts(process: Process, default: Any = None) -> float | None:
    """The throttling interval for ``process``.

    ``configuration["process"]["minimum_time_between_starts"]`` overrides
    ``default`` (the global ``restart_throttling_config`` value); values that are
    not numbers are ignored.

    Args:
        process: the process record.
        default: the global value, if any.

    Returns:
        Seconds, or ``None`` when the process is never throttled.
    """
    configuration = process.configuration
    section = configuration.get("process") if isinstance(configuration, dict) else None
    if isinstance(section, dict) and THROTTLE_KEY in section:
        own = _seconds(section[THROTTLE_KEY])
        if own is not None:
            return own
    return _seconds(default) if default is not None else None


def throttle_end_time(process: Process, default: Any = None) -> float | None:
    """The earliest time ``process`` may be dispatched again, or ``None``.

    Only processes dispatched more than once are throttled, so the first start and
    the first restart are immediate; from the second restart on, a dispatch waits
    until ``max(dispatch_times) + minimum_time_between_starts``.
    """
    if len(process.dispatch_times) <= 1:
        return None
    interval = minimum_time_between_starts(process, default)
    if interval is None:
        return None
    return max(process.dispatch_times) + interval


# -- the slot board ------------------------------------------------------------------


class _Agent:
    __slots__ = ("free", "properties", "resource_id")

    def __init__(self, resource: Resource) -> None:
        self.resource_id = resource.resource_id
        self.free = resource.available_slots
        self.properties = resource.properties


class _NodeSlots:
    __slots__ = ("agents", "free", "node_id", "tags")

    def __init__(self, node_id: str, agents: list[_Agent], tags: set[str] | None) -> None:
        self.node_id = node_id
        self.agents = agents
        self.free = sum(agent.free for agent in agents)
        #: ``None`` when the node record is missing: tagged processes skip the node.
        self.tags = tags


def _freeze(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted(((str(k), _freeze(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value  # type: ignore[no-any-return]


class SlotBoard:
    """The free slots of one pass, in placement order; consumed as processes are placed.

    Build it from the records read at the start of a pass. Capacity only shrinks
    and tags only accumulate during a pass, so a search for a given
    ``(constraints, tag)`` resumes where the previous identical search stopped:
    filling 10,000 identical processes costs about one node visit each.

    Args:
        resources: every resource record (any state).
        nodes: node records by id.
    """

    def __init__(self, resources: Iterable[Resource], nodes: Mapping[str, Node]) -> None:
        occupied: set[str] = set()
        by_node: dict[str, list[_Agent]] = {}
        for resource in sorted(resources, key=lambda r: r.resource_id):
            if resource.assigned:
                occupied.add(resource.node_id)
            if resource.state == ExecutionResourceState.OK and resource.available_slots > 0:
                by_node.setdefault(resource.node_id, []).append(_Agent(resource))
        containers = []
        for node_id, agents in by_node.items():
            node = nodes.get(node_id)
            tags = set(node.node_exclusive) if node is not None else None
            containers.append(_NodeSlots(node_id, agents, tags))

        def age(container: _NodeSlots) -> tuple[float, str]:
            node = nodes.get(container.node_id)
            return (node.state_time if node is not None else 0.0, container.node_id)

        busy = sorted(
            (c for c in containers if c.node_id in occupied), key=lambda c: (c.free, *age(c))
        )
        idle = sorted((c for c in containers if c.node_id not in occupied), key=age)
        self._order: list[_NodeSlots] = busy + idle
        self._by_engine: dict[str, list[_NodeSlots]] = {}
        for container in self._order:
            engines = {a.properties.get("engine") for a in container.agents if a.properties}
            for engine in engines:
                if isinstance(engine, str):
                    self._by_engine.setdefault(engine, []).append(container)
        self._resume: dict[Hashable, int] = {}

    def node_order(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """Nodes in placement order, each with its agents' ``(resource_id, free slots)``.

        Agents are listed most free slots first, as they would be chosen.
        """
        return [
            (
                c.node_id,
                [
                    (a.resource_id, a.free)
                    for a in sorted(c.agents, key=lambda a: -a.free)
                    if a.free > 0
                ],
            )
            for c in self._order
            if c.free > 0
        ]

    def place(self, constraints: Mapping[str, Any], tag: str | None) -> tuple[str, str] | None:
        """Take a slot for a process, if one matches.

        Args:
            constraints: the process's effective constraints.
            tag: its ``node_exclusive`` tag, if any.

        Returns:
            ``(resource_id, node_id)`` of the slot taken, or ``None``.
        """
        engine = constraints.get("engine")
        scope = self._by_engine.get(engine, []) if isinstance(engine, str) else self._order
        signature = (_freeze(constraints), tag)
        for index in range(self._resume.get(signature, 0), len(scope)):
            container = scope[index]
            if container.free <= 0:
                continue
            if tag is not None and (container.tags is None or tag in container.tags):
                continue
            best: _Agent | None = None
            for agent in container.agents:
                if (
                    (best is None or agent.free > best.free)
                    and agent.free > 0
                    and match_constraints(constraints, agent.properties)
                ):
                    best = agent
            if best is None:
                continue
            best.free -= 1
            container.free -= 1
            if tag is not None and container.tags is not None:
                container.tags.add(tag)
            self._resume[signature] = index
            return best.resource_id, container.node_id
        self._resume[signature] = len(scope)
        return None


# -- the pass ------------------------------------------------------------------------


def plan(
    entries: Iterable[Key],
    processes: Mapping[str, Process],
    resources: Sequence[Resource],
    nodes: Mapping[str, Node],
    engines: EngineRegistry,
    *,
    now: float,
    throttle: Any = None,
) -> Plan:
    """Decide the fate of each queue entry, without side effects.

    For each distinct entry, in order (repeated entries are decided once):

    1. no such process, another round, a state below ``200-REQUESTED`` or at
       least ``400-PENDING``: :class:`Drop`;
    2. ``350-ASSIGNED``: :class:`Hold` (awaiting the agent);
    3. a throttled restart, or one backing off (``next_restart_at``): :class:`Wait`
       with ``throttled_until``;
    4. a resource already lists the entry (a half-finished assignment):
       :class:`Assign` with ``recovered``;
    5. a matching free slot: :class:`Assign`;
    6. otherwise :class:`Wait` (``300-WAITING`` or ``900-REJECTED`` by queueing
       mode; a process already WAITING stays so).

    Args:
        entries: queue entries ``(upid, round)`` to examine, oldest first.
        processes: the records of (at least) those processes, by upid; a missing
            record means the process does not exist or is not waiting for a slot.
        resources: every resource record.
        nodes: every node record, by id.
        engines: the engine registry (effective engines, never stored).
        now: the current time (epoch seconds), for throttling.
        throttle: the global ``minimum_time_between_starts``, if configured.

    Returns:
        The decisions and, for the needs computation, each entry's engine.
    """
    result = Plan()
    board = SlotBoard(resources, nodes)
    reserved: dict[Key, Resource] = {}
    for resource in resources:
        for key in resource.assigned:
            reserved.setdefault(key, resource)
    seen: set[Key] = set()
    for key in entries:
        if key in seen:
            continue
        seen.add(key)
        upid, round_ = key
        process = processes.get(upid)
        if process is None:
            result.decisions.append(Drop(upid, round_, "no such process waiting for a slot"))
            continue
        if process.round != round_:
            result.decisions.append(Drop(upid, round_, f"process is in round {process.round}"))
            continue
        if process.state >= ProcessState.PENDING or process.state < ProcessState.REQUESTED:
            result.decisions.append(Drop(upid, round_, f"process is {process.state}"))
            continue
        constraints = effective_constraints(engines, process)
        result.engines[key] = effective_engine(constraints)
        if process.state == ProcessState.ASSIGNED:
            result.decisions.append(Hold(upid, round_))
            continue
        until = throttle_end_time(process, throttle)
        backoff = process.next_restart_at
        backing_off = backoff is not None and backoff > now
        if backoff is not None and backing_off and (until is None or backoff > until):
            until = backoff  # the restart policy's backoff (dispatcher.restart_policy)
        if until is not None and until > now:
            # A backoff is no lack of room: the process waits whatever its queueing mode.
            state = _unplaced_state(process)
            if backing_off and state == ProcessState.REJECTED:
                state = ProcessState.WAITING
            result.decisions.append(Wait(upid, round_, state, until))
            if result.throttle_expiry is None or until < result.throttle_expiry:
                result.throttle_expiry = until
            continue
        holder = reserved.get(key)
        if holder is not None:
            result.decisions.append(
                Assign(upid, round_, holder.resource_id, holder.node_id, recovered=True)
            )
            continue
        slot = board.place(constraints, process.node_exclusive)
        if slot is not None:
            result.decisions.append(Assign(upid, round_, *slot))
        else:
            result.decisions.append(Wait(upid, round_, _unplaced_state(process)))
    return result


def _unplaced_state(process: Process) -> str:
    if process.state >= ProcessState.WAITING:
        return process.state
    return get_queueing_decision(process.queueing_mode, process.starts)
