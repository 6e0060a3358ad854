"""Properties of the matchmaker over random fleets and queues (hypothesis).

For any set of nodes and agents (engines, slots, states, properties), any queue
(constraints, node_exclusive tags, queueing modes, duplicates) and any number of
passes:

* no resource holds more assignments than it has slots;
* no node holds a ``node_exclusive`` tag twice, and no two placed processes with
  one tag share a node;
* every queued process ends placed (``350-ASSIGNED`` on a resource that lists it
  and is ``OK``, of its engine, matching its constraints), ``300-WAITING`` or
  ``900-REJECTED``, and placed or rejected ones have left the queue;
* a waiting process really had no free matching slot.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.engines import EngineRegistry
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Node, Process, Resource
from dispatcher.placement import match_constraints
from dispatcher.store.memory import MemoryStore
from dispatcher.transitions import get_queueing_decision
from pdcommon.settings import EngineSettings
from pdcommon.states import ExecutionResourceState, ProcessState
from tests.support.hypothesis_profiles import examples
from tests.support.wiring import make_matchmaker

ENGINES = ("engine1", "engine2")
HATS = ("fedora", "bowler")
TAGS = ("t1", "t2")

agent_st = st.fixed_dictionaries(
    {
        "slots": st.integers(1, 3),
        "state": st.sampled_from(
            [ExecutionResourceState.OK] * 3
            + [ExecutionResourceState.WARNING, ExecutionResourceState.DISABLED]
        ),
    }
)
node_st = st.fixed_dictionaries(
    {
        "engine": st.sampled_from(ENGINES),
        "hat": st.sampled_from(HATS),
        "agents": st.lists(agent_st, min_size=1, max_size=3),
    }
)
process_st = st.fixed_dictionaries(
    {
        "engine": st.none() | st.sampled_from(ENGINES),
        "hat": st.none() | st.sampled_from(HATS) | st.just(list(HATS)),
        "tag": st.none() | st.sampled_from(TAGS),
        "queueing_mode": st.none() | st.sampled_from(["ALWAYS", "NEVER", "START_ONLY"]),
        "copies": st.integers(1, 2),
    }
)


def build(nodes: list[dict[str, Any]], processes: list[dict[str, Any]]) -> MemoryStore:
    store = MemoryStore()
    for n, spec in enumerate(nodes):
        node_id = f"n{n}"
        names = [f"{node_id}_a{a}" for a in range(len(spec["agents"]))]
        store.add_node(
            Node(
                node_id=node_id,
                domain_id=f"pd_domain_{spec['engine']}",
                properties={"hat": spec["hat"]},
                resources=names,
                state_time=float(n),
            )
        )
        for name, agent in zip(names, spec["agents"], strict=True):
            store.add_resource(
                Resource(
                    resource_id=name,
                    node_id=node_id,
                    slot_count=agent["slots"],
                    state=agent["state"],
                    properties={"hat": spec["hat"], "engine": spec["engine"], "resource_id": name},
                )
            )
    for p, spec in enumerate(processes):
        constraints: dict[str, Any] = {}
        if spec["engine"] is not None:
            constraints["engine"] = spec["engine"]
        if spec["hat"] is not None:
            constraints["hat"] = spec["hat"]
        upid = f"p{p}"
        store.add_process(
            Process(
                upid=upid,
                definition={"definition_id": "D", "executable": {"exec": "/bin/true"}},
                state=ProcessState.REQUESTED,
                constraints=constraints,
                node_exclusive=spec["tag"],
                queueing_mode=spec["queueing_mode"],
            )
        )
        for _ in range(spec["copies"]):
            store.enqueue(upid, 0)
    return store


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=st.lists(node_st, max_size=4),
    processes=st.lists(process_st, max_size=14),
    passes=st.integers(1, 3),
)
def test_placement_invariants(
    nodes: list[dict[str, Any]], processes: list[dict[str, Any]], passes: int
) -> None:
    store = build(nodes, processes)
    engines = EngineRegistry(
        {e: EngineSettings(slots=3) for e in ENGINES}, default_engine="engine1"
    )
    messenger = RecordingMessenger()
    matchmaker = make_matchmaker(store, messenger, engines, clock=lambda: 0.0)
    for _ in range(passes):
        assert matchmaker.matchmake().complete
    resources = {r.resource_id: r for r in store.list_resources()}
    node_records = {n.node_id: n for n in store.list_nodes()}
    queued = Counter(store.list_queued())

    # no resource over-committed
    for resource in resources.values():
        assert len(resource.assigned) <= resource.slot_count
    # tags: at most once per node, and placed holders of a tag on distinct nodes
    for node in node_records.values():
        assert len(node.node_exclusive) == len(set(node.node_exclusive))
    holders: dict[str, set[str]] = {}

    for process in store.list_processes():
        key = (process.upid, 0)
        effective = engines.effective_constraints(process.constraints, process.definition)
        if process.state == ProcessState.ASSIGNED:
            resource = resources[process.assigned or ""]
            assert resource.assigned.count(key) == 1
            assert resource.state == ExecutionResourceState.OK
            assert match_constraints(effective, resource.properties)
            assert queued[key] == 0
            if process.node_exclusive is not None:
                node_id = resource.node_id
                assert node_id not in holders.setdefault(process.node_exclusive, set())
                holders[process.node_exclusive].add(node_id)
                assert process.node_exclusive in node_records[node_id].node_exclusive
        elif process.state == ProcessState.REJECTED:
            assert queued[key] == 0
            decision = get_queueing_decision(process.queueing_mode, process.starts)
            assert decision == ProcessState.REJECTED
        else:
            assert process.state == ProcessState.WAITING, process
            assert queued[key] >= 1
            # it really had nowhere to go
            for resource in resources.values():
                if (
                    resource.state == ExecutionResourceState.OK
                    and resource.available_slots > 0
                    and match_constraints(effective, resource.properties)
                ):
                    tags = node_records[resource.node_id].node_exclusive
                    assert process.node_exclusive is not None and process.node_exclusive in tags
    # every launch went to the agent the process is assigned to, once
    launched = [(m.target, m.args["u_pid"]) for m in messenger.messages if m.op == "launch_process"]
    assert len(launched) == len(set(launched))
    for target, upid in launched:
        record = store.get_process(upid)
        assert record is not None and record.assigned == target
