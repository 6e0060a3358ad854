"""How many nodes each engine needs, and where that number goes.

:func:`calculate_need` counts the processes that want an engine (queued ones,
ones placed on its agents, and processes held back by a system boot) and turns
them into a node count. :class:`NeedRegistrar` remembers what it last told the
:class:`NeedSink` (the provisioner) and, after each completed matchmaking pass,
reports the engines whose need changed. On a scale-down it picks the nodes to
retire, newest unoccupied first (FILO), and disables their agents first so they
never receive new work.

A scale-down waits for the engine's **grace** (``scale_down_grace`` of its
provisioner site, :meth:`~pdcommon.settings.ProvisionerSettings.scale_down_grace`):
the need registered is the highest need computed in the last ``grace`` seconds
(:func:`held_need`), so a node is retired only once it has been unneeded that
long, and a need that rises again within the grace keeps it. A burst of short
processes therefore does not start and stop nodes every few seconds, while a
rise is registered at once. The matchmaker makes a pass when a held need may
drop (:meth:`NeedRegistrar.next_due`).

What was registered lives in memory, so the first report of a leadership term
(after a restart, or when another instance takes over) cannot compare with it.
It compares with the stored state instead: the provisioner's ``running`` nodes of
each engine (its :class:`~dispatcher.model.VM` records) that are not already
retiring. Those beyond the need are retired as on any scale-down, so a need
lowered while no leader ran (``base_need`` changed across a restart) still frees
the idle nodes. Nodes that no VM record covers (``static`` sites) are never
retired at a term's start. With a grace, the nodes found running count as needed
for the first ``grace`` seconds of the term (a restart in the middle of a burst
keeps the pool), and those still beyond the need are retired then.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dashi.errors import NotFoundError
from dispatcher.engines import EngineRegistry
from dispatcher.model import Node, Resource
from dispatcher.store.base import Store
from dispatcher.store.modify import retry_conflicts
from pdcommon.settings import EngineSettings
from pdcommon.states import ExecutionResourceState

__all__ = [
    "EngineNeed",
    "NeedRegistrar",
    "NeedRegistration",
    "NeedSink",
    "RecordingNeedSink",
    "calculate_need",
    "calculate_needs",
    "choose_retirees",
    "held_need",
]

log = logging.getLogger(__name__)


class NeedSink(Protocol):
    """Receives each engine's node count: the provisioner's side of the needs."""

    def register_need(self, engine_id: str, need: int, retirable_nodes: list[str]) -> None:
        """Keep ``need`` nodes of ``engine_id`` running.

        Called by the matchmaker, in its thread, after a completed matchmaking pass
        for every engine whose need changed since the last call, and for every
        engine on the first pass of a leadership term (even when the need is 0).
        Implementations must return quickly (record the target and act on it
        elsewhere). An exception is logged and the same registration is attempted
        again after the next pass.

        Args:
            engine_id: the engine (its legacy EPUM domain is ``pd_domain_<engine>``).
            need: how many nodes the engine should have (legacy ``preserve_n``).
            retirable_nodes: on a scale-down (or, on the first pass of a term, when
                more provisioned nodes run than needed), the node ids to remove
                first, newest first. Their agents are already ``DISABLED``. Empty
                otherwise.
        """


@dataclass(frozen=True, slots=True)
class NeedRegistration:
    """One call recorded by :class:`RecordingNeedSink`."""

    engine_id: str
    need: int
    retirable_nodes: list[str] = field(default_factory=list)


class RecordingNeedSink:
    """A :class:`NeedSink` that records every registration (the fake for tests).

    Thread-safe. Attributes:
        error: when set, every call records the registration and then raises it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registrations: list[NeedRegistration] = []
        self.error: Exception | None = None

    def register_need(self, engine_id: str, need: int, retirable_nodes: list[str]) -> None:
        """Record the registration; raise :attr:`error` if one is set."""
        with self._lock:
            self._registrations.append(NeedRegistration(engine_id, need, list(retirable_nodes)))
            error = self.error
        if error is not None:
            raise error

    @property
    def registrations(self) -> list[NeedRegistration]:
        """Every registration so far, oldest first (a copy)."""
        with self._lock:
            return list(self._registrations)

    def for_engine(self, engine_id: str) -> list[NeedRegistration]:
        """The registrations of one engine, oldest first."""
        return [r for r in self.registrations if r.engine_id == engine_id]

    def current(self, engine_id: str) -> int | None:
        """The last need registered for ``engine_id``, or ``None``."""
        mine = self.for_engine(engine_id)
        return mine[-1].need if mine else None

    def clear(self) -> None:
        """Forget every recorded registration."""
        with self._lock:
            self._registrations.clear()


@dataclass(frozen=True, slots=True)
class EngineNeed:
    """The need of one engine and the facts behind it.

    Attributes:
        engine_id: the engine.
        need: nodes wanted: ``max(base_need, occupied nodes, ceil((processes +
            spare_slots) / (slots * replicas)))``, capped at ``maximum_vms``.
        process_count: distinct processes counted (without spare slots).
        occupied_nodes: nodes where one of its agents holds a process.
        unoccupied_nodes: its other nodes (retirement candidates).
    """

    engine_id: str
    need: int
    process_count: int
    occupied_nodes: frozenset[str]
    unoccupied_nodes: frozenset[str]


def calculate_need(
    engine_id: str,
    engine: EngineSettings,
    *,
    queued: Iterable[str],
    resources: Iterable[Resource],
    boot_pending: Iterable[str] = (),
) -> EngineNeed:
    """The need of one engine.

    A process counts once however many rounds of it are queued or placed.

    Args:
        engine_id: the engine.
        engine: its settings (slots, replicas, spare_slots, base_need, maximum_vms).
        queued: upids of queue entries whose effective engine is ``engine_id``
            (WAITING and briefly ASSIGNED ones included).
        resources: resource records of any engine and state; those whose
            ``properties["engine"]`` is ``engine_id`` count, whatever their state.
        boot_pending: upids of this engine's ``150-UNSCHEDULED_PENDING`` processes,
            while the system boots.

    Returns:
        The need, with the occupied and unoccupied nodes.
    """
    upids = set(queued)
    upids.update(boot_pending)
    occupied: set[str] = set()
    every: set[str] = set()
    for resource in resources:
        if (resource.properties or {}).get("engine") != engine_id:
            continue
        every.add(resource.node_id)
        if resource.assigned:
            occupied.add(resource.node_id)
            upids.update(upid for upid, _ in resource.assigned)
    per_node = engine.slots * engine.replicas
    process_need = math.ceil((len(upids) + engine.spare_slots) / per_node)
    need = max(engine.base_need, len(occupied), process_need)
    if engine.maximum_vms is not None:
        need = min(need, engine.maximum_vms)
    return EngineNeed(engine_id, need, len(upids), frozenset(occupied), frozenset(every - occupied))


def calculate_needs(
    engines: EngineRegistry,
    *,
    queued: Iterable[tuple[str, str | None]],
    resources: Iterable[Resource],
    boot_pending: Iterable[tuple[str, str | None]] = (),
) -> dict[str, EngineNeed]:
    """The need of every engine of ``engines``.

    Args:
        engines: the registry.
        queued: ``(upid, engine)`` of every queue entry (``None``: no engine).
        resources: every resource record.
        boot_pending: ``(upid, engine)`` of processes held back by a system boot.

    Returns:
        Engine id → its need. Processes of unknown engines are not counted.
    """
    by_engine: dict[str, list[str]] = {engine_id: [] for engine_id in engines}
    for upid, engine_id in queued:
        if engine_id in by_engine:
            by_engine[engine_id].append(upid)
    booting: dict[str, list[str]] = {engine_id: [] for engine_id in engines}
    for upid, engine_id in boot_pending:
        if engine_id in booting:
            booting[engine_id].append(upid)
    listed = list(resources)
    result = {}
    for engine_id, engine in engines.items():
        result[engine_id] = calculate_need(
            engine_id,
            engine,
            queued=by_engine[engine_id],
            resources=listed,
            boot_pending=booting[engine_id],
        )
    return result


def choose_retirees(unoccupied: Iterable[str], nodes: Mapping[str, Node], count: int) -> list[str]:
    """The nodes to retire on a scale-down: the newest unoccupied ones (FILO).

    Args:
        unoccupied: candidate node ids.
        nodes: node records by id (an unknown node counts as created at time 0).
        count: how many nodes the need dropped by.

    Returns:
        Up to ``count`` node ids, newest first (ties: highest id first).
    """
    if count <= 0:
        return []

    def created(node_id: str) -> tuple[float, str]:
        node = nodes.get(node_id)
        return (node.state_time if node is not None else 0.0, node_id)

    return sorted(unoccupied, key=created, reverse=True)[:count]


def held_need(
    samples: Sequence[tuple[float, int]], now: float, grace: float
) -> tuple[int, list[tuple[float, int]], float | None]:
    """The need to register under a scale-down grace: the highest one of the window.

    ``samples`` are ``(time, need)`` in time order, each in effect until the next.
    The window is ``(now - grace, now]``: the need in effect at its start counts,
    and so does every sample taken within it.

    Args:
        samples: the needs computed so far, oldest first (not empty).
        now: epoch seconds.
        grace: seconds a lower need must last before it is registered (0: at once).

    Returns:
        The held need; the samples still relevant (to keep instead of ``samples``);
        and when the held need may drop next (``None``: not before a new sample).
    """
    start = now - grace
    first = 0
    for index, (taken, _) in enumerate(samples):
        if taken <= start:
            first = index
    kept = list(samples[first:])
    held = max(need for _, need in kept)
    due = kept[1][0] + grace if len(kept) > 1 else None
    return held, kept, due


class NeedRegistrar:
    """Reports changed needs to a :class:`NeedSink`, retiring nodes on a scale-down.

    The registered needs live in memory: a new leadership term starts empty
    (:meth:`reset`), so its first report covers every engine, and retires the
    provisioned nodes running beyond the need (module docstring).

    Args:
        store: where resources are disabled.
        sink: the receiver of the needs.
        grace: engine id → its scale-down grace in seconds (default: none; module
            docstring).
        clock: epoch seconds.
    """

    def __init__(
        self,
        store: Store,
        sink: NeedSink,
        *,
        grace: Callable[[str], float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._sink = sink
        self._grace = grace or (lambda _engine_id: 0.0)
        self._clock = clock
        self._registered: dict[str, int] = {}
        self._samples: dict[str, list[tuple[float, int]]] = {}
        self._due: dict[str, float] = {}

    @property
    def registered(self) -> dict[str, int]:
        """The needs last reported, by engine (a copy)."""
        return dict(self._registered)

    def reset(self) -> None:
        """Forget what was reported. Called at the start of each leadership term."""
        self._registered.clear()
        self._samples.clear()
        self._due.clear()

    def next_due(self) -> float | None:
        """Epoch seconds when a held need may drop (a pass should report then)."""
        return min(self._due.values(), default=None)

    def report(
        self,
        needs: Mapping[str, EngineNeed],
        resources: MutableMapping[str, Resource],
        nodes: Mapping[str, Node],
    ) -> None:
        """Tell the sink about every engine whose need changed.

        Called by the matchmaker after a completed pass. On a scale-down, the
        retirees' agents are set ``DISABLED`` in the store (and in ``resources``)
        before the sink hears of them.

        Args:
            needs: the current need of each engine.
            resources: resource records by id, as the pass left them (updated in
                place for disabled agents).
            nodes: node records by id.
        """
        provisioned: dict[str, set[str]] | None = None
        now = self._clock()
        for engine_id, computed in needs.items():
            previous = self._registered.get(engine_id)
            grace = max(0.0, self._grace(engine_id))
            samples = self._samples.setdefault(engine_id, [])
            if previous is None and not samples and grace > 0:
                # First report of the term: the nodes found running count as
                # needed for one grace (module docstring).
                if provisioned is None:
                    provisioned = self._running_vms()
                running = {n for n in provisioned.get(engine_id, ()) if not _retiring(n, resources)}
                samples.append((now, len(running)))
            changed = not samples or samples[-1][1] != computed.need
            if changed:
                samples.append((now, computed.need))
            held, kept, due = held_need(samples, now, grace)
            self._samples[engine_id] = kept
            if due is None:
                self._due.pop(engine_id, None)
            else:
                self._due[engine_id] = due
            if changed and held != computed.need:
                log.debug(
                    "engine %s: need %d, %d held for the scale-down grace (%g s)",
                    engine_id,
                    computed.need,
                    held,
                    grace,
                )
            need = computed if held == computed.need else _replace_need(computed, held)
            if previous == need.need:
                continue
            # Nodes retired by an earlier scale-down stay listed until they are
            # gone; picking one again would retire fewer nodes than the need fell.
            candidates = [n for n in need.unoccupied_nodes if not _retiring(n, resources)]
            excess = 0
            if previous is None:
                # First report of the term: compare with the nodes the provisioner
                # keeps running (module docstring), not with a need nobody remembers.
                if provisioned is None:
                    provisioned = self._running_vms()
                running = {n for n in provisioned.get(engine_id, ()) if not _retiring(n, resources)}
                candidates = [n for n in candidates if n in running]
                excess = len(running) - need.need
            elif need.need < previous:
                excess = previous - need.need
            retirees = choose_retirees(candidates, nodes, excess)
            if retirees:
                for resource in list(resources.values()):
                    if resource.node_id in retirees:
                        disabled = self._disable(resource.resource_id)
                        if disabled is not None:
                            resources[resource.resource_id] = disabled
            try:
                self._sink.register_need(engine_id, need.need, retirees)
            except Exception:
                log.exception("could not register the need of engine %s; will retry", engine_id)
                continue
            log.info(
                "engine %s needs %d node(s)%s",
                engine_id,
                need.need,
                f", retiring {', '.join(retirees)}" if retirees else "",
            )
            self._registered[engine_id] = need.need

    def _running_vms(self) -> dict[str, set[str]]:
        """Engine → the node ids of its ``running`` VM records."""
        # Imported here: the provisioner package loads its drivers (and kombu),
        # which the pure modules importing this one (engine status) must not.
        from dispatcher.provisioner.base import VMState

        running: dict[str, set[str]] = {}
        for vm in self._store.list_vms():
            if vm.state == VMState.RUNNING:
                running.setdefault(vm.engine_id, set()).add(vm.node_id)
        return running

    def _disable(self, resource_id: str) -> Resource | None:
        """Set a resource DISABLED (absorbing); the record as written, or None if gone."""

        def attempt() -> Resource | None:
            resource = self._store.get_resource(resource_id)
            if resource is None or resource.state == ExecutionResourceState.DISABLED:
                return resource
            resource.state = ExecutionResourceState.DISABLED
            try:
                self._store.update_resource(resource)
            except NotFoundError:
                return None
            return resource

        return retry_conflicts(f"resource {resource_id!r}", attempt)


def _replace_need(need: EngineNeed, held: int) -> EngineNeed:
    return EngineNeed(
        need.engine_id, held, need.process_count, need.occupied_nodes, need.unoccupied_nodes
    )


def _retiring(node_id: str, resources: Mapping[str, Resource]) -> bool:
    """True when every agent of ``node_id`` is DISABLED (retired, not yet removed)."""
    states = [r.state for r in resources.values() if r.node_id == node_id]
    return bool(states) and all(state == ExecutionResourceState.DISABLED for state in states)
