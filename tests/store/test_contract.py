"""The Store contract (dispatcher/store/base.py), run against every backend."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pytest

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.model import Definition, Node, Process, Resource
from dispatcher.store.applied import AppliedRequest, PendingRequest, pending_request
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sql import SqlStore
from pdcommon.states import ProcessState
from tests.store.conftest import StoreFactory


def make_process(upid: str = "proc1", **changes: object) -> Process:
    process = Process(
        upid=upid,
        definition={"definition_id": "d1", "executable": {"module": "m", "class": "C"}},
        name="name1",
        configuration={"process": {"omit_from_system_restart": True}},
        constraints={"engine": "engine1"},
        subscribers=[["destination", "operation"]],
        queueing_mode="ALWAYS",
        restart_mode="ABNORMAL",
        start_times=[1.5, 2.25],
        dispatch_times=[3.0],
    )
    return dataclasses.replace(process, **changes)  # type: ignore[arg-type]


def make_resource(resource_id: str = "eeagent_1", **changes: object) -> Resource:
    resource = Resource(
        resource_id=resource_id,
        node_id="node1",
        slot_count=4,
        properties={"engine": "engine1", "hostname": "vm1"},
        assigned=[("proc1", 0), ("proc2", 3)],
        last_heartbeat="2024-01-01T00:00:00",
    )
    return dataclasses.replace(resource, **changes)  # type: ignore[arg-type]


def make_node(node_id: str = "node1", **changes: object) -> Node:
    node = Node(
        node_id=node_id,
        domain_id="pd_domain_engine1",
        properties={"engine": "engine1", "hostname": "vm1"},
        resources=["eeagent_1"],
        node_exclusive=["tag1"],
        state_time=1700000000.25,
    )
    return dataclasses.replace(node, **changes)  # type: ignore[arg-type]


def test_backends_satisfy_the_store_protocol() -> None:
    # Given the two implementations, When typed as Store, Then mypy and runtime agree.
    stores: list[type[Store]] = [MemoryStore, SqlStore]
    for cls in stores:
        for name in Store.__dict__:
            if not name.startswith("_"):
                assert callable(getattr(cls, name)), f"{cls.__name__}.{name}"


# -- definitions -------------------------------------------------------------------------


def test_definition_round_trips_and_lists_sorted(store: Store) -> None:
    # Given two definitions
    d2 = Definition("d2", "supd", {"exec": "/bin/true", "argv": ["-x"]}, "n2", "second")
    d1 = Definition("d1", "supd", "notepad.exe")
    store.add_definition(d2)
    store.add_definition(d1)
    # Then each reads back equal, and ids list sorted
    assert store.get_definition("d2") == d2
    assert store.get_definition("d1") == d1
    assert store.get_definition("nope") is None
    assert store.list_definition_ids() == ["d1", "d2"]


def test_definition_add_existing_conflicts(store: Store) -> None:
    store.add_definition(Definition("d1", executable="a"))
    with pytest.raises(WriteConflictError):
        store.add_definition(Definition("d1", executable="b"))
    got = store.get_definition("d1")
    assert got is not None and got.executable == "a"


def test_definition_update_and_remove(store: Store) -> None:
    store.add_definition(Definition("d1", executable="a"))
    updated = Definition("d1", "t", {"new": 1}, "n", "desc", version="legacy")
    store.update_definition(updated)
    assert store.get_definition("d1") == updated
    store.remove_definition("d1")
    assert store.get_definition("d1") is None
    assert store.list_definition_ids() == []


def test_definition_max_runtime_round_trips_and_an_update_replaces_it(store: Store) -> None:
    # Given a definition with a default maximum runtime and one without
    store.add_definition(Definition("d1", "supd", {"exec": "/bin/true"}, max_runtime_seconds=30.5))
    store.add_definition(Definition("d2", "supd", {"exec": "/bin/true"}))
    # Then each reads back as written
    d1, d2 = store.get_definition("d1"), store.get_definition("d2")
    assert d1 is not None and d1.max_runtime_seconds == 30.5
    assert d2 is not None and d2.max_runtime_seconds is None
    # When d1 is replaced without one and d2 with one, Then they read back so
    store.update_definition(Definition("d1", "supd", {"exec": "/bin/true"}))
    store.update_definition(Definition("d2", "supd", {"exec": "/bin/true"}, max_runtime_seconds=7))
    d1, d2 = store.get_definition("d1"), store.get_definition("d2")
    assert d1 is not None and d1.max_runtime_seconds is None
    assert d2 is not None and d2.max_runtime_seconds == 7


def test_definition_update_or_remove_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.update_definition(Definition("d1"))
    with pytest.raises(NotFoundError):
        store.remove_definition("d1")


# -- processes ---------------------------------------------------------------------------


def test_process_add_sets_version_and_round_trips(store: Store) -> None:
    # Given a process with every field set
    process = make_process(assigned="eeagent_1", hostname="vm1", starts=2, dispatches=1)
    # When added
    store.add_process(process)
    # Then the caller's record and the stored one have version 1 and equal fields
    assert process.version == 1
    assert store.get_process("proc1") == process
    assert store.get_process("missing") is None


def test_process_json_fields_come_back_as_json(store: Store) -> None:
    # Given tuples inside JSON fields, When stored and read, Then they come back as lists
    store.add_process(make_process(subscribers=[("dest", "op")], configuration=None))
    got = store.get_process("proc1")
    assert got is not None
    assert got.subscribers == [["dest", "op"]]
    assert got.configuration is None


def test_process_add_existing_conflicts(store: Store) -> None:
    store.add_process(make_process())
    with pytest.raises(WriteConflictError):
        store.add_process(make_process(name="other"))
    got = store.get_process("proc1")
    assert got is not None and got.name == "name1" and got.version == 1


def test_process_update_increments_versions(store: Store) -> None:
    # Given a stored process
    store.add_process(make_process())
    process = store.get_process("proc1")
    assert process is not None
    # When updated twice from the same record
    process.state = ProcessState.RUNNING
    store.update_process(process)
    assert process.version == 2
    process.round = 3
    store.update_process(process)
    # Then both the record and the stored copy are at version 3
    assert process.version == 3
    assert store.get_process("proc1") == process


def test_process_update_with_stale_version_conflicts(store: Store) -> None:
    # Given two readers of the same process
    store.add_process(make_process())
    first, second = store.get_process("proc1"), store.get_process("proc1")
    assert first is not None and second is not None
    # When the first writes, Then the second's write is refused
    first.state = ProcessState.RUNNING
    store.update_process(first)
    second.state = ProcessState.FAILED
    with pytest.raises(WriteConflictError):
        store.update_process(second)
    assert second.version == 1
    got = store.get_process("proc1")
    assert got is not None and got.state == ProcessState.RUNNING and got.version == 2


def test_process_update_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.update_process(make_process(version=1))


def test_list_processes_in_creation_order_with_state_filter(store: Store) -> None:
    # Given processes created in a non-sorted order, one later updated
    for upid, state in [
        ("c", ProcessState.RUNNING),
        ("a", ProcessState.WAITING),
        ("b", "500-RUNNING"),
    ]:
        store.add_process(make_process(upid, state=state))
    a = store.get_process("a")
    assert a is not None
    a.state = ProcessState.RUNNING
    store.update_process(a)
    # Then listing keeps creation order, filtered or not
    assert [p.upid for p in store.list_processes()] == ["c", "a", "b"]
    assert [p.upid for p in store.list_processes([ProcessState.RUNNING])] == ["c", "a", "b"]
    assert store.list_processes([ProcessState.FAILED, ProcessState.WAITING]) == []
    assert store.list_processes([]) == []
    assert [p.upid for p in store.list_processes({ProcessState.RUNNING, "x"})] == ["c", "a", "b"]


def test_add_process_queued_adds_the_process_and_its_queue_entry(store: Store) -> None:
    # Given a queue with an entry already
    store.enqueue("other", 0)
    calls: list[tuple[str, object, object]] = []
    store.add_listener(
        lambda kind: calls.append((kind, store.get_process("proc1"), store.list_queued()))
    )
    # When a process at round 2 is added queued
    process = make_process(round=2)
    store.add_process_queued(process)
    # Then it is stored at version 1, its entry is last in the queue, and listeners
    # heard "process" then "queue", each after both writes were visible
    assert process.version == 1
    assert store.get_process("proc1") == process
    assert store.list_queued() == [("other", 0), ("proc1", 2)]
    assert [kind for kind, _, _ in calls] == ["process", "queue"]
    for _, seen, queued in calls:
        assert seen == process and queued == [("other", 0), ("proc1", 2)]


def test_add_process_queued_of_an_existing_upid_writes_nothing(store: Store) -> None:
    # Given a stored process
    store.add_process(make_process())
    calls: list[str] = []
    store.add_listener(calls.append)
    # When it is added queued again
    again = make_process(name="other")
    with pytest.raises(WriteConflictError):
        store.add_process_queued(again)
    # Then neither the process nor the queue changed, and nobody was notified
    got = store.get_process("proc1")
    assert got is not None and got.name == "name1" and got.version == 1
    assert again.version == 0
    assert store.list_queued() == []
    assert calls == []


def test_list_process_dicts_equals_to_dict_of_every_process(store: Store) -> None:
    # Given processes with every field set, one updated after creation
    store.add_process(make_process("b", assigned="eeagent_1", hostname="vm1", starts=2))
    store.add_process(make_process("a", configuration=None, subscribers=None, start_times=[]))
    b = store.get_process("b")
    assert b is not None
    b.state = ProcessState.RUNNING
    store.update_process(b)
    # When listed as dicts
    dicts = store.list_process_dicts()
    # Then they are the records' to_dict(), key order included, in creation order
    expected = [p.to_dict() for p in store.list_processes()]
    assert dicts == expected
    assert [list(d) for d in dicts] == [list(d) for d in expected]
    # And they share nothing with the store or with each other
    dicts[0]["definition"]["executable"]["module"] = "changed"
    dicts[0]["start_times"].append(9.0)
    assert [p.to_dict() for p in store.list_processes()] == expected
    assert store.list_process_dicts() == expected


def test_list_process_dicts_of_an_empty_store_is_empty(store: Store) -> None:
    assert store.list_process_dicts() == []


# -- deep-copy isolation -----------------------------------------------------------------


def test_records_are_copied_in_and_out(store: Store) -> None:
    # Given stored records whose originals are later mutated
    process, resource, node = make_process(), make_resource(), make_node()
    definition = Definition("d1", executable={"argv": ["a"]})
    store.add_process(process)
    store.add_resource(resource)
    store.add_node(node)
    store.add_definition(definition)
    process.definition["executable"]["module"] = "changed"
    resource.assigned.append(("proc9", 0))
    node.resources.append("eeagent_9")
    definition.executable["argv"].append("b")
    # When read back and the copies mutated too
    got = store.get_process("proc1")
    assert got is not None
    assert got.definition["executable"]["module"] == "m"
    got.constraints["engine"] = "changed"
    got_resource = store.get_resource("eeagent_1")
    assert got_resource is not None
    assert got_resource.assigned == [("proc1", 0), ("proc2", 3)]
    got_resource.properties.clear()
    got_node = store.get_node("node1")
    assert got_node is not None and got_node.resources == ["eeagent_1"]
    got_definition = store.get_definition("d1")
    assert got_definition is not None and got_definition.executable == {"argv": ["a"]}
    # Then the store is unchanged
    again = store.get_process("proc1")
    assert again is not None and again.constraints == {"engine": "engine1"}
    listed = store.list_processes()[0]
    listed.definition.clear()
    again_resource = store.get_resource("eeagent_1")
    assert again_resource is not None and again_resource.properties["engine"] == "engine1"
    assert store.list_processes()[0].definition["definition_id"] == "d1"
    listed_engines = store.list_engines()
    assert listed_engines == {}


def test_engine_specs_are_copied(store: Store) -> None:
    spec: dict[str, object] = {"slots": 4, "config": {"a": [1]}}
    store.add_engine("e1", spec)
    spec["slots"] = 99
    listed = store.list_engines()
    assert listed == {"e1": {"slots": 4, "config": {"a": [1]}}}
    listed["e1"]["slots"] = 7
    assert store.list_engines()["e1"]["slots"] == 4


# -- queue -------------------------------------------------------------------------------


def test_queue_is_fifo_with_duplicates(store: Store) -> None:
    # Given entries with a duplicate
    for entry in [("p1", 0), ("p2", 0), ("p1", 0), ("p1", 1), ("p3", 2)]:
        store.enqueue(*entry)
    assert store.list_queued() == [("p1", 0), ("p2", 0), ("p1", 0), ("p1", 1), ("p3", 2)]
    # When one duplicate is removed, Then the oldest match goes
    store.enqueue("p2", 0)
    store.remove_queued("p2", 0)
    assert store.list_queued() == [("p1", 0), ("p1", 0), ("p1", 1), ("p3", 2), ("p2", 0)]
    store.remove_queued("p1", 0)
    assert store.list_queued() == [("p1", 0), ("p1", 1), ("p3", 2), ("p2", 0)]


def test_remove_queued_missing_is_not_found(store: Store) -> None:
    store.enqueue("p1", 0)
    with pytest.raises(NotFoundError):
        store.remove_queued("p1", 1)
    with pytest.raises(NotFoundError):
        store.remove_queued("p2", 0)
    assert store.list_queued() == [("p1", 0)]


def test_clear_queue_empties_it(store: Store) -> None:
    store.enqueue("p1", 0)
    store.enqueue("p2", 5)
    store.clear_queue()
    assert store.list_queued() == []
    store.clear_queue()
    store.enqueue("p3", 0)
    assert store.list_queued() == [("p3", 0)]


# -- resources and nodes -----------------------------------------------------------------


def test_resource_lifecycle(store: Store) -> None:
    # Given two resources
    store.add_resource(make_resource("r2"))
    resource = make_resource("r1", assigned=[])
    store.add_resource(resource)
    assert resource.version == 1
    assert store.get_resource("r1") == resource
    assert [r.resource_id for r in store.list_resources()] == ["r1", "r2"]
    # When updated, Then the version advances and a stale copy conflicts
    stale = store.get_resource("r1")
    assert stale is not None
    resource.assigned.append(("p1", 2))
    resource.state = "MISSING"
    store.update_resource(resource)
    assert resource.version == 2
    assert store.get_resource("r1") == resource
    with pytest.raises(WriteConflictError):
        store.update_resource(stale)
    with pytest.raises(WriteConflictError):
        store.add_resource(make_resource("r1"))
    # When removed, Then it is gone and a second removal is not found
    store.remove_resource("r1")
    assert store.get_resource("r1") is None
    with pytest.raises(NotFoundError):
        store.remove_resource("r1")
    with pytest.raises(NotFoundError):
        store.update_resource(resource)
    assert [r.resource_id for r in store.list_resources()] == ["r2"]


def test_node_lifecycle(store: Store) -> None:
    store.add_node(make_node("n2"))
    node = make_node("n1")
    store.add_node(node)
    assert node.version == 1
    assert store.get_node("n1") == node
    assert [n.node_id for n in store.list_nodes()] == ["n1", "n2"]
    stale = store.get_node("n1")
    assert stale is not None
    node.resources.append("eeagent_2")
    store.update_node(node)
    assert node.version == 2 and store.get_node("n1") == node
    with pytest.raises(WriteConflictError):
        store.update_node(stale)
    with pytest.raises(WriteConflictError):
        store.add_node(make_node("n1"))
    store.remove_node("n1")
    assert store.get_node("n1") is None
    with pytest.raises(NotFoundError):
        store.remove_node("n1")
    with pytest.raises(NotFoundError):
        store.update_node(node)


# -- engines and PD state ----------------------------------------------------------------


def test_engines_persist_and_conflict(store: Store) -> None:
    assert store.list_engines() == {}
    store.add_engine("engine2", {"slots": 2})
    store.add_engine("engine1", {"slots": 4, "heartbeat_period": 1.5})
    with pytest.raises(WriteConflictError):
        store.add_engine("engine1", {"slots": 1})
    assert store.list_engines() == {
        "engine1": {"slots": 4, "heartbeat_period": 1.5},
        "engine2": {"slots": 2},
    }
    assert list(store.list_engines()) == ["engine1", "engine2"]


def test_pd_state_is_uninitialized_until_set_initialized(store: Store) -> None:
    # Given a fresh store
    assert store.get_pd_state() == "UNINITIALIZED"
    assert not store.is_initialized()
    # When a state is set before initialisation, Then it stays hidden
    store.set_pd_state("SYSTEM_BOOTING")
    assert store.get_pd_state() == "UNINITIALIZED"
    # When initialised, Then the stored state shows
    store.set_initialized()
    assert store.is_initialized()
    assert store.get_pd_state() == "SYSTEM_BOOTING"
    store.set_pd_state("OK")
    assert store.get_pd_state() == "OK"
    store.set_initialized()
    assert store.is_initialized()


def test_the_first_owner_claimed_stays_the_owner(store_factory: StoreFactory) -> None:
    # Given a database claimed by one system
    store = store_factory()
    assert store.claim_owner("alpha") == "alpha"
    # When it is claimed again by it, or by another system (another instance)
    assert store.claim_owner("alpha") == "alpha"
    assert store_factory().claim_owner("beta") == "alpha"
    # Then the first claim holds
    assert store.claim_owner("beta") == "alpha"


def test_system_boot_flag_toggles(store: Store) -> None:
    assert store.is_system_boot() is False
    store.set_system_boot(True)
    store.set_system_boot(True)
    assert store.is_system_boot() is True
    store.set_system_boot(False)
    assert store.is_system_boot() is False


def test_sql_state_is_shared_between_store_instances(store_factory: object, backend: str) -> None:
    # Given two stores on one database (two dispatcher instances)
    if backend == "memory":
        pytest.skip("the memory store is private to its process")
    assert callable(store_factory)
    first, second = store_factory(), store_factory()
    first.add_process(make_process())
    first.set_system_boot(True)
    first.enqueue("proc1", 0)
    # Then the second sees the first's writes
    assert second.get_process("proc1") is not None
    assert second.is_system_boot()
    assert second.list_queued() == [("proc1", 0)]


# -- listeners ---------------------------------------------------------------------------


def test_listeners_are_called_after_each_write_with_the_kind(store: Store) -> None:
    # Given a listener that reads the store when called (so the write must be visible)
    calls: list[tuple[str, object]] = []

    def listener(kind: str) -> None:
        seen = {
            "process": lambda: store.get_process("proc1"),
            "queue": store.list_queued,
            "resource": store.list_resources,
            "node": store.list_nodes,
            "definition": store.list_definition_ids,
            "engine": store.list_engines,
            "state": store.is_system_boot,
        }[kind]()
        calls.append((kind, seen))

    store.add_listener(listener)
    # When every kind of record is written
    process = make_process()
    store.add_process(process)
    store.update_process(process)
    store.enqueue("proc1", 0)
    store.remove_queued("proc1", 0)
    store.clear_queue()
    store.add_resource(make_resource())
    store.remove_resource("eeagent_1")
    store.add_node(make_node())
    store.update_node(make_node(version=1))
    store.remove_node("node1")
    store.add_definition(Definition("d1"))
    store.update_definition(Definition("d1", name="x"))
    store.remove_definition("d1")
    store.add_engine("e1", {"slots": 1})
    store.set_system_boot(True)
    store.set_pd_state("OK")
    store.set_initialized()
    # Then each write notified its kind once, after the data was visible
    kinds = [kind for kind, _ in calls]
    assert kinds == [
        "process", "process", "queue", "queue", "queue", "resource", "resource",
        "node", "node", "node", "definition", "definition", "definition", "engine",
        "state", "state", "state",
    ]  # fmt: skip
    assert calls[0][1] is not None and calls[0][1].version == 1  # type: ignore[attr-defined]
    assert calls[1][1].version == 2  # type: ignore[attr-defined]
    assert calls[2][1] == [("proc1", 0)]
    assert calls[3][1] == []
    assert calls[14][1] is True


def test_failed_writes_do_not_notify(store: Store) -> None:
    calls: list[str] = []
    store.add_listener(calls.append)
    with pytest.raises(NotFoundError):
        store.remove_queued("p", 0)
    with pytest.raises(NotFoundError):
        store.update_process(make_process(version=1))
    store.add_engine("e", {})
    with pytest.raises(WriteConflictError):
        store.add_engine("e", {})
    assert calls == ["engine"]


# -- applied requests (dispatcher.store.applied) ------------------------------------------


@contextlib.contextmanager
def pending(request_id: str, kind: str = "process", at: float = 100.0) -> Iterator[PendingRequest]:
    """Apply a request: the store records it with its first write of ``kind``."""
    request = PendingRequest(
        request_id=request_id,
        op="schedule_process" if kind == "process" else "create_definition",
        digest="d" * 64,
        applied_at=at,
        kind=kind,
        result_of=lambda record: record.summary() if isinstance(record, Process) else None,
    )
    token = pending_request.set(request)
    try:
        yield request
    finally:
        pending_request.reset(token)


def test_a_pending_request_is_recorded_with_its_first_write_only(store: Store) -> None:
    # Given a request being applied
    process = make_process()
    with pending("req-1") as request:
        # When it adds a process, then writes it again and queues it
        store.add_process(process)
        first = process.summary()
        process.state = ProcessState.TERMINATED
        store.update_process(process)
        store.enqueue(process.upid, process.round)
    # Then the first write recorded the request with the result of that write
    assert request.recorded
    applied = store.get_applied_request("req-1")
    assert applied == AppliedRequest("req-1", "schedule_process", "d" * 64, first, 100.0)
    # And writes outside any request record nothing
    store.update_process(process)
    assert store.get_applied_request("other") is None


def test_a_pending_request_is_recorded_by_a_write_of_its_kind(store: Store) -> None:
    with pending("req-def", kind="definition") as request:
        store.add_process(make_process())  # not the request's kind
        assert not request.recorded
        store.add_definition(Definition("d1"))
    assert store.get_applied_request("req-def") == AppliedRequest(
        "req-def", "create_definition", "d" * 64, None, 100.0
    )


def test_add_process_queued_records_the_pending_request_atomically(store: Store) -> None:
    with pending("req-q"):
        store.add_process_queued(make_process())
    applied = store.get_applied_request("req-q")
    assert applied is not None and applied.result["upid"] == "proc1"
    assert store.list_queued() == [("proc1", 0)]


def test_a_failed_write_records_nothing_and_the_next_one_does(store: Store) -> None:
    # Given a stored process
    process = make_process()
    store.add_process(process)
    with pending("req-2") as request:
        # When the request's first write loses a race
        with pytest.raises(WriteConflictError):
            store.update_process(make_process(version=7))
        assert store.get_applied_request("req-2") is None
        # Then its next, successful, write records it
        process.state = ProcessState.TERMINATED
        store.update_process(process)
    assert request.recorded
    applied = store.get_applied_request("req-2")
    assert applied is not None and applied.result["state"] == ProcessState.TERMINATED


@pytest.mark.parametrize("write", ["update", "add_queued", "remove_definition"])
def test_a_request_applied_already_makes_its_write_fail_and_change_nothing(
    store: Store, write: str
) -> None:
    # Given a request applied once (its process, definition and record stored)
    process = make_process()
    store.add_definition(Definition("d1"))
    kind = "definition" if write == "remove_definition" else "process"
    with pending("req-3", kind=kind):
        if kind == "definition":
            store.update_definition(Definition("d1", name="first"))
        store.add_process(process)
    # When another copy of it writes
    with pending("req-3", kind=kind), pytest.raises(WriteConflictError):
        if write == "update":
            store.update_process(dataclasses.replace(process, state=ProcessState.TERMINATED))
        elif write == "add_queued":
            store.add_process_queued(make_process("proc2"))
        else:
            store.remove_definition("d1")
    # Then nothing of that write is stored
    stored = store.get_process("proc1")
    assert stored is not None and stored.state == process.state and stored.version == 1
    assert store.get_process("proc2") is None
    assert store.list_queued() == []
    assert store.get_definition("d1") is not None


def test_applied_requests_are_pruned_by_age_and_count(store: Store) -> None:
    # Given five requests applied at times 1..5
    for at in range(1, 6):
        with pending(f"req-{at}", kind="definition", at=float(at)):
            store.add_definition(Definition(f"d{at}"))
    # When those before 2 are forgotten, keeping at most 3
    removed = store.prune_applied_requests(before=2.0, keep=3)
    # Then only the newest three are left
    assert removed == 2
    left = [r for r in (f"req-{at}" for at in range(1, 6)) if store.get_applied_request(r)]
    assert left == ["req-3", "req-4", "req-5"]
    # And a later pruning by age alone leaves the newer ones
    assert store.prune_applied_requests(before=4.0, keep=100) == 1
    assert store.get_applied_request("req-4") is not None


def test_begin_system_boot_marks_a_boot_initialisation_until_it_is_finished(
    store: Store,
) -> None:
    # Given an initialised dispatcher in OK
    store.set_pd_state("OK")
    store.set_initialized()
    assert not store.is_boot_init_pending()
    # When a system boot is begun (offline)
    store.begin_system_boot()
    # Then the flag is set, the dispatcher counts as uninitialised, a boot init is pending
    assert store.is_system_boot()
    assert store.get_pd_state() == "UNINITIALIZED"
    assert store.is_boot_init_pending()
    # When the doctor finishes the initialisation
    store.finish_initialization("SYSTEM_BOOTING")
    # Then the state shows, and nothing is pending any more
    assert store.get_pd_state() == "SYSTEM_BOOTING"
    assert store.is_initialized()
    assert not store.is_boot_init_pending()
    assert store.is_system_boot()
