"""A dispatcher wired like :class:`~dispatcher.service.DispatcherService`, without a broker.

:func:`build` registers every operation on an :class:`RpcService` exactly as the
daemon does, over a given store, with a recording messenger, a fake clock and a
fake agent caller; :func:`seed` puts a small but varied state in the store so that
fuzzed requests meet existing definitions, processes in many states, a node, an
agent and an added engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashi.broker import BrokerConfig
from dashi.service import RpcService
from dispatcher.messaging import RecordingMessenger
from dispatcher.service import DispatcherService
from dispatcher.store.base import Store
from pdcommon.settings import Settings
from pdcommon.states import ProcessState
from tests.health.conftest import DOMAIN1, NOW, FakeClock, beat, make_engines, put_process
from tests.support.wiring import health_parts, make_core, make_heartbeats

#: upids present after :func:`seed`, and one that is not.
UPIDS = [
    "p-unscheduled",
    "p-requested",
    "p-pending",
    "p-running",
    "p-terminating",
    "p-terminated",
    "p-exited",
    "p-unknown",
]
DEFINITION_IDS = ["D", "D2", "D-unknown"]
EXECUTABLE = {"exec": "/bin/true", "argv": ["x"]}


class FakeAgentCaller:
    """Answers ``get_process_logs`` for the seeded agent; other agents hold nothing."""

    def call(self, service: str, op: str, timeout: float | None = None, **args: Any) -> Any:
        from dashi.errors import NotFoundError

        if service != "eeagent_1":
            raise NotFoundError(f"no process {args.get('u_pid')} on {service}")
        return "some output\n"


@dataclass
class Dispatcher:
    store: Store
    messenger: RecordingMessenger
    service: DispatcherService

    @property
    def rpc(self) -> RpcService:
        return self.service.rpc


def build(store: Store) -> Dispatcher:
    """The daemon's RPC wiring over ``store`` (no broker, no leader singletons)."""
    messenger = RecordingMessenger()
    clock = FakeClock()
    engines = make_engines()
    parts = health_parts(store, messenger, engines, clock=clock)
    core = make_core(store, messenger, transitions=parts.transitions)
    heartbeats = make_heartbeats(
        store, messenger, engines, caller=FakeAgentCaller(), clock=clock, parts=parts
    )
    rpc = RpcService(BrokerConfig(), "process_dispatcher")
    service = DispatcherService(
        Settings(state_dir=Path(".pd-fuzz-unused")),
        store=store,
        core=core,
        heartbeats=heartbeats,
        rpc=rpc,
    )
    return Dispatcher(store, messenger, service)


def seed(dispatcher: Dispatcher) -> None:
    """Definitions, a node with one agent, processes in many states, an added engine."""
    core, health, store = dispatcher.service.core, dispatcher.service.heartbeats, dispatcher.store
    assert health is not None
    core.create_definition("D", "supd", EXECUTABLE, name="dee")
    core.create_definition("D2", "supd", {"exec": "/bin/sleep", "argv": ["5"]})
    health.node_state("node1", DOMAIN1, "600-RUNNING", {"hostname": "host1"})
    health.heartbeat(beat(at=NOW), sender="sys.eeagent_1")
    core.create_process("p-unscheduled", "D", name="u")
    core.schedule_process(
        "p-requested", "D", subscribers=[["sub", "process_state"]], restart_mode="ALWAYS"
    )
    put_process(store, "p-pending", ProcessState.PENDING, assigned="eeagent_1")
    put_process(store, "p-running", ProcessState.RUNNING, round_=2, assigned="eeagent_1")
    put_process(store, "p-terminating", ProcessState.TERMINATING, assigned="eeagent_1")
    put_process(store, "p-terminated", ProcessState.TERMINATED)
    put_process(store, "p-exited", ProcessState.EXITED, round_=3)
    health.add_engine({"engine_id": "engine3", "slots": 2})
    dispatcher.messenger.clear()


def snapshot(store: Store) -> dict[str, Any]:
    """Every store listing, versions included, for "nothing was written" checks."""
    return {
        "definitions": {
            i: (d.to_dict() if (d := store.get_definition(i)) else None)
            for i in store.list_definition_ids()
        },
        "processes": [(p.to_dict(), p.version) for p in store.list_processes()],
        "queue": store.list_queued(),
        "resources": [(r.to_dict(), r.version) for r in store.list_resources()],
        "nodes": [(n.to_dict(), n.version) for n in store.list_nodes()],
        "vms": [vm.to_dict() for vm in store.list_vms()],
        "engines": store.list_engines(),
        "state": (store.get_pd_state(), store.is_system_boot(), store.is_initialized()),
    }
