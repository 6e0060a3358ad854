"""A slot freed while a matchmaking pass runs is not lost to the stale-entry set.

Found by the leadership scenario: a heartbeat handled on an RPC thread freed a slot
while the matchmaker's pass (reading the resources before that) left a waiting
process for lack of a slot. The pass then marked the entry stale *after* the
heartbeat's change had cleared the stale set, so the next pass skipped it and a
later, fresh entry took the slot (FIFO broken; with no later entry the slot stayed
unused until another resource change).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from dispatcher.engines import EngineRegistry
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Node, Process, Resource
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import EngineSettings
from pdcommon.states import ProcessState
from tests.support.wiring import make_matchmaker


class HookedStore(MemoryStore):
    """Runs ``during_pass`` once, in another thread, when a pass lists the nodes
    (after it has read the resources)."""

    during_pass: Callable[[], None] | None = None

    def list_nodes(self) -> list[Node]:
        hook, self.during_pass = self.during_pass, None
        if hook is not None:
            thread = threading.Thread(target=hook)
            thread.start()
            thread.join()
        return super().list_nodes()


def test_a_slot_freed_during_a_pass_goes_to_the_oldest_waiting_process() -> None:
    # Given a 1-slot agent running p0, and p1 queued behind it
    store = HookedStore()
    store.add_node(Node("n1", "pd_domain_engine1", resources=["r1"]))
    store.add_resource(
        Resource("r1", "n1", 1, properties={"engine": "engine1"}, assigned=[("p0", 0)])
    )
    definition = {"definition_id": "D", "executable": {"exec": "/bin/true", "argv": []}}
    store.add_process(
        Process("p0", definition, state=ProcessState.RUNNING, assigned="r1", starts=1)
    )
    store.add_process(Process("p1", definition, state=ProcessState.REQUESTED))
    store.enqueue("p1", 0)
    engines = EngineRegistry({"engine1": EngineSettings(slots=1)}, default_engine="engine1")
    messenger = RecordingMessenger()
    matchmaker = make_matchmaker(store, messenger, engines)
    matchmaker.initialize()

    # When p0's slot is freed (a heartbeat on another thread) while a pass runs
    def free_the_slot() -> None:
        resource = store.get_resource("r1")
        assert resource is not None
        resource.assigned = []
        store.update_resource(resource)

    store.during_pass = free_the_slot
    first = matchmaker.run_once()
    assert first is not None and first.waiting == [("p1", 0)]
    # and a newer process is queued
    store.add_process(Process("p2", definition, state=ProcessState.REQUESTED))
    store.enqueue("p2", 0)
    # Then the next pass gives the slot to p1, the oldest waiting process
    second = matchmaker.run_once()
    assert second is not None
    assert second.assigned == [("p1", 0, "r1")]
    launched = [m.args["u_pid"] for m in messenger.messages if m.op == "launch_process"]
    assert launched == ["p1"]
    p2 = store.get_process("p2")
    assert p2 is not None and p2.state == ProcessState.WAITING
