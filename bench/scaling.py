"""Scaling: demand for N nodes appears → time until every ``create_node`` is issued.

A :class:`Provisioner` runs its real loop (``run``) with a thread pool of
``max_parallel`` workers over a driver; the demand is one ``register_need`` call.
The figures are the time from that call to the first and the last ``create_node``
call, and until every node record is ``pending`` (created). Target: every create
request issued within 1 s of the demand.

    .venv/bin/python bench/scaling.py                       # FakeDriver, N = 10, 100, 500
    .venv/bin/python bench/scaling.py --nodes 50 --latency 0.5 --parallel 8
    .venv/bin/python bench/scaling.py --driver local --nodes 4   # real pd-eeagent processes

With ``--driver local`` the nodes are real local agents on the embedded broker;
the bench also reports when every agent's first heartbeat arrived, then destroys
the nodes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatcher.engines import EngineRegistry
from dispatcher.evacuation import Evacuation
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.provisioner.base import NodeRequest, ProvidedNode, VMState
from dispatcher.provisioner.fake import FakeDriver
from dispatcher.provisioner.manager import Provisioner
from dispatcher.provisioner.sites import Site
from dispatcher.registration import Registration
from dispatcher.store.memory import MemoryStore
from dispatcher.transitions import ProcessStateMachine
from pdcommon.settings import EngineSettings, ProvisionerSettings


class Timed:
    """Wraps a driver and records when each create call starts."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.kind = driver.kind
        self.provisions = True
        self.starts: list[float] = []
        self._lock = threading.Lock()

    def create_node(self, request: NodeRequest) -> ProvidedNode:
        with self._lock:
            self.starts.append(time.perf_counter())
        return self.driver.create_node(request)

    def destroy_node(self, node_id: str, provider_id: str | None) -> None:
        self.driver.destroy_node(node_id, provider_id)

    def list_nodes(self) -> list[ProvidedNode]:
        return list(self.driver.list_nodes())

    def close(self) -> None:
        self.driver.close()


def run_once(nodes: int, driver: Any, parallel: int, state_dir: Path | None) -> dict[str, float]:
    store = MemoryStore()
    engines = EngineRegistry({"engine1": EngineSettings(slots=1)}, default_engine="engine1")
    messenger = RecordingMessenger()
    transitions = ProcessStateMachine(store, messenger)
    registration = Registration(store, engines, Evacuation(store, transitions))
    handler = HeartbeatHandler(
        store, messenger, engines, transitions=transitions, registration=registration
    )
    service = None
    if state_dir is not None:
        from dashi.broker import BrokerConfig
        from dashi.service import RpcService

        service = RpcService(
            BrokerConfig(uri="embedded://", state_dir=state_dir), "process_dispatcher"
        )
        service.handle("heartbeat", handler.heartbeat, sender_kwarg="sender", validate=False)
        service.start()
    timed = Timed(driver)
    provisioner = Provisioner(
        store,
        engines,
        {"default": Site("default", timed, 600)},
        registration,
        settings=ProvisionerSettings(max_parallel=parallel, interval=5),
    )
    stop = threading.Event()
    loop = threading.Thread(target=provisioner.run, args=(stop,), daemon=True)
    loop.start()
    time.sleep(0.3)  # let the first pass (sync) finish
    demand = time.perf_counter()
    provisioner.register_need("engine1", nodes, [])
    while len(timed.starts) < nodes:
        time.sleep(0.001)
    issued = time.perf_counter()
    while sum(vm.state == VMState.PENDING for vm in store.list_vms()) < nodes:
        time.sleep(0.005)
    created = time.perf_counter()
    result = {
        "first_create_ms": (min(timed.starts) - demand) * 1000,
        "all_issued_ms": (issued - demand) * 1000,
        "all_created_ms": (created - demand) * 1000,
    }
    if state_dir is not None:
        result["heartbeats_ms"] = wait_heartbeats(store, nodes, demand)
    stop.set()
    loop.join()
    provisioner.register_need("engine1", 0, [])
    provisioner.step()
    deadline = time.monotonic() + 60
    while any(vm.state not in VMState.FINAL for vm in store.list_vms()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        provisioner.step()
    provisioner.close()
    if service is not None:
        service.stop()
    return result


def wait_heartbeats(store: MemoryStore, nodes: int, demand: float) -> float:
    """Milliseconds until every node has a registered agent (via the heartbeat sink)."""
    while len({r.node_id for r in store.list_resources()}) < nodes:
        time.sleep(0.01)
    return (time.perf_counter() - demand) * 1000


def local_driver(state_dir: Path) -> Any:
    from dispatcher.provisioner.agents import AgentTemplate
    from dispatcher.provisioner.local import LocalDriver
    from eeagent.supervisor import stop_left_supervisord
    from pdcommon.settings import LocalSiteSettings

    return LocalDriver(
        LocalSiteSettings(heartbeat=1),
        template=AgentTemplate(amqp_uri="embedded://"),
        state_dir=state_dir,
        owner="bench",
        stop_supervisord=stop_left_supervisord,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, action="append", help="N (repeatable)")
    parser.add_argument("--driver", choices=["fake", "local"], default="fake")
    parser.add_argument("--latency", type=float, default=0.0, help="fake create latency (s)")
    parser.add_argument("--parallel", type=int, default=8, help="max_parallel")
    args = parser.parse_args()
    counts = args.nodes or ([10, 100, 500] if args.driver == "fake" else [4])
    print(f"driver={args.driver} max_parallel={args.parallel} latency={args.latency}s")
    print(
        f"{'N':>5} {'first create':>13} {'all issued':>11} {'all created':>12} {'heartbeats':>11}"
    )
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="pdb-", dir="/tmp") as tmp:
            state_dir = Path(tmp) if args.driver == "local" else None
            if state_dir is not None:
                driver = local_driver(state_dir)
            else:
                driver = FakeDriver(latency=args.latency)
            figures = run_once(count, driver, args.parallel, state_dir)
        beats = figures.get("heartbeats_ms")
        print(
            f"{count:>5} {figures['first_create_ms']:>10.1f} ms {figures['all_issued_ms']:>8.1f} ms"
            f" {figures['all_created_ms']:>9.1f} ms"
            + (f" {beats:>8.1f} ms" if beats is not None else f" {'-':>11}")
        )


if __name__ == "__main__":
    main()
