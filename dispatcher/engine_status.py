"""What each engine needs and why: the status ``list_engines``, ``dump`` and ``pd-cli`` show.

:func:`engine_statuses` reads the store once and gives, for every engine the
dispatcher knows, a JSON-ready record::

    {
      "config": {...},                # the engine's settings (the legacy keys)
      "driver": "local",              # its provisioner site's driver
      "provisioned": true,            # false for static sites: the need is informational
      "need": 3,                      # nodes wanted now (dispatcher.needs.calculate_need)
      "why": {
        "base_need": 1, "queued": 5, "running": 4, "held_back": 0,
        "processes": 9,               # distinct processes counted (queued, running, held back)
        "spare_slots": 0, "slots": 4, "replicas": 1,
        "process_need": 3,            # ceil((processes + spare_slots) / (slots * replicas))
        "occupied_nodes": 1,          # nodes where one of its agents holds a process
        "maximum_vms": null, "capped": false
      },
      "nodes": {"node1": "running"},  # every node of the engine and its state
      "nodes_by_state": {"running": ["node1"]},
      "idle_nodes": ["node2"],        # nodes whose agents hold nothing
      "retire_first": ["node2"]       # the order a scale-down retires idle nodes in
    }

The need is the one the matchmaker registers (before the provisioner site's
scale-down grace, which may hold a higher one for a while). ``held_back``
counts the engine's ``150-UNSCHEDULED_PENDING`` processes while the dispatcher
is ``SYSTEM_BOOTING``: they count toward the need, so nodes come up before the
boot ends. A node's state is its provisioner VM state (``requested``,
``running``, ...) when the provisioner tracks it, else ``retiring`` when every
agent on it is ``DISABLED`` and ``announced`` otherwise (a ``node_state`` node).

:func:`system_status` is the dispatcher-wide part: its state, the boot flag,
whether a boot initialisation is pending, and how many processes are held back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from dispatcher.engines import EngineRegistry, engine_id_from_domain
from dispatcher.model import Node, Process, Resource
from dispatcher.needs import calculate_need, choose_retirees
from dispatcher.placement import effective_constraints, effective_engine
from dispatcher.store.base import Store
from pdcommon.settings import EngineSettings
from pdcommon.states import ExecutionResourceState, ProcessDispatcherState, ProcessState

__all__ = ["engine_status", "engine_statuses", "system_status"]

#: States a process can have while it has a queue entry.
_QUEUEABLE: Final = (
    ProcessState.REQUESTED,
    ProcessState.DIED_REQUESTED,
    ProcessState.WAITING,
    ProcessState.ASSIGNED,
)

#: Returns the driver of an engine's provisioner site (``None``: unknown).
DriverOf = Callable[[str], "str | None"]


def system_status(store: Store) -> dict[str, Any]:
    """The dispatcher-wide state: ``{"state", "system_boot", "boot_init_pending",
    "held_back"}`` (``held_back``: processes in ``150-UNSCHEDULED_PENDING``)."""
    return {
        "state": store.get_pd_state(),
        "system_boot": store.is_system_boot(),
        "boot_init_pending": store.is_boot_init_pending(),
        "held_back": len(store.list_processes([ProcessState.UNSCHEDULED_PENDING])),
    }


def engine_statuses(
    store: Store, engines: EngineRegistry, driver_of: DriverOf | None = None
) -> dict[str, dict[str, Any]]:
    """The status of every engine (module docstring), from one read of the store.

    Args:
        store: where the queue, processes, resources, nodes and VMs are read.
        engines: the engines to report.
        driver_of: the provisioner driver of an engine's site (``None``: not shown).

    Returns:
        Engine id → its status record.
    """
    booting = store.get_pd_state() == ProcessDispatcherState.SYSTEM_BOOTING
    states = [*_QUEUEABLE, ProcessState.UNSCHEDULED_PENDING] if booting else list(_QUEUEABLE)
    processes = {p.upid: p for p in store.list_processes(states)}
    engine_of = {upid: _engine(engines, p) for upid, p in processes.items()}
    queued: dict[str, set[str]] = {}
    for upid, _round in store.list_queued():
        engine_id = engine_of.get(upid)
        if engine_id is not None:
            queued.setdefault(engine_id, set()).add(upid)
    held: dict[str, set[str]] = {}
    for upid, process in processes.items():
        engine_id = engine_of[upid]
        if process.state == ProcessState.UNSCHEDULED_PENDING and engine_id is not None:
            held.setdefault(engine_id, set()).add(upid)
    resources = store.list_resources()
    nodes = {node.node_id: node for node in store.list_nodes()}
    vm_states = {vm.node_id: (vm.engine_id, vm.state) for vm in store.list_vms()}
    return {
        engine_id: engine_status(
            engine_id,
            engine,
            queued=queued.get(engine_id, set()),
            held_back=held.get(engine_id, set()),
            resources=resources,
            nodes=nodes,
            vm_states=vm_states,
            driver=driver_of(engine_id) if driver_of is not None else None,
        )
        for engine_id, engine in engines.items()
    }


def engine_status(
    engine_id: str,
    engine: EngineSettings,
    *,
    queued: Iterable[str],
    held_back: Iterable[str],
    resources: Iterable[Resource],
    nodes: Mapping[str, Node],
    vm_states: Mapping[str, tuple[str, str]],
    driver: str | None = None,
) -> dict[str, Any]:
    """The status of one engine (module docstring).

    Args:
        engine_id: the engine.
        engine: its settings.
        queued: upids of its queue entries.
        held_back: upids of its processes held back by a system boot.
        resources: every resource record (those of other engines are ignored).
        nodes: every node record by id.
        vm_states: node id → ``(engine id, provisioner state)`` of the VM records.
        driver: its provisioner site's driver.
    """
    queued, held_back = set(queued), set(held_back)
    mine = [r for r in resources if (r.properties or {}).get("engine") == engine_id]
    running = {upid for r in mine for upid, _ in r.assigned}
    need = calculate_need(engine_id, engine, queued=queued, resources=mine, boot_pending=held_back)
    per_node = engine.slots * engine.replicas
    process_need = -(-(need.process_count + engine.spare_slots) // per_node)
    uncapped = max(engine.base_need, len(need.occupied_nodes), process_need)
    node_states = _node_states(engine_id, mine, nodes, vm_states)
    by_state: dict[str, list[str]] = {}
    for node_id, state in sorted(node_states.items()):
        by_state.setdefault(state, []).append(node_id)
    idle = sorted(n for n in need.unoccupied_nodes if node_states.get(n) != "retiring")
    return {
        "config": engine.model_dump(mode="json"),
        "driver": driver,
        "provisioned": driver != "static",
        "need": need.need,
        "why": {
            "base_need": engine.base_need,
            "queued": len(queued),
            "running": len(running),
            "held_back": len(held_back),
            "processes": need.process_count,
            "spare_slots": engine.spare_slots,
            "slots": engine.slots,
            "replicas": engine.replicas,
            "process_need": process_need,
            "occupied_nodes": len(need.occupied_nodes),
            "maximum_vms": engine.maximum_vms,
            "capped": need.need < uncapped,
        },
        "nodes": dict(sorted(node_states.items())),
        "nodes_by_state": by_state,
        "idle_nodes": idle,
        "retire_first": choose_retirees(idle, nodes, len(idle)),
    }


def _engine(engines: EngineRegistry, process: Process) -> str | None:
    return effective_engine(effective_constraints(engines, process))


def _node_states(
    engine_id: str,
    resources: list[Resource],
    nodes: Mapping[str, Node],
    vm_states: Mapping[str, tuple[str, str]],
) -> dict[str, str]:
    """Node id → state for every node of the engine (module docstring)."""
    node_ids = {r.node_id for r in resources}
    node_ids.update(
        node_id
        for node_id, node in nodes.items()
        if engine_id_from_domain(node.domain_id) == engine_id
    )
    node_ids.update(
        node_id for node_id, (vm_engine, _) in vm_states.items() if vm_engine == engine_id
    )
    agent_states: dict[str, list[str]] = {}
    for resource in resources:
        agent_states.setdefault(resource.node_id, []).append(resource.state)
    states = {}
    for node_id in node_ids:
        vm = vm_states.get(node_id)
        if vm is not None:
            states[node_id] = vm[1]
            continue
        agents = agent_states.get(node_id, [])
        retiring = bool(agents) and all(s == ExecutionResourceState.DISABLED for s in agents)
        states[node_id] = "retiring" if retiring else "announced"
    return states
