"""dump(): every resource, process and node record."""

from __future__ import annotations

from dispatcher.core import ProcessDispatcherCore
from dispatcher.model import Node
from dispatcher.store.memory import MemoryStore
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process


def test_dump_of_an_empty_dispatcher_has_three_empty_maps(core: ProcessDispatcherCore) -> None:
    # Given a dispatcher with only a definition, Then dump has empty maps only
    # (and the dispatcher-wide state, which a core without engines shows alone)
    assert core.dump() == {
        "resources": {},
        "processes": {},
        "nodes": {},
        "vms": {},
        "system": {
            "state": "UNINITIALIZED",
            "system_boot": False,
            "boot_init_pending": False,
            "held_back": 0,
        },
    }


def test_dump_returns_resources_processes_and_nodes_keyed_by_id(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given a node, an agent on it holding a running process, and a queued process
    store.add_node(Node("node1", domain_id="pd_domain_engine1", resources=["hats"]))
    put_process(store, "running", ProcessState.RUNNING, round_=2, assigned="hats")
    core.schedule_process("queued", DEFINITION_ID)
    # When the dispatcher is dumped
    dump = core.dump()
    # Then every record appears under its id, as plain dicts without versions
    assert set(dump) == {"resources", "processes", "nodes", "vms", "system"}
    assert set(dump["processes"]) == {"running", "queued"}
    assert dump["processes"]["queued"] == core.describe_process("queued")
    assert dump["processes"]["running"]["owner"] is None
    assert "version" not in dump["processes"]["running"]
    # And resource assignments show as [owner, upid, round] lists
    assert dump["resources"]["hats"]["assigned"] == [[None, "running", 2]]
    assert dump["nodes"]["node1"]["resources"] == ["hats"]
    assert "version" not in dump["resources"]["hats"] and "version" not in dump["nodes"]["node1"]
    # And the queue and definitions are not included
    assert "queue" not in dump and "definitions" not in dump
