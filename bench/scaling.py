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

The pool bench runs a whole dispatcher (embedded broker, SQLite, a ``local``
site) and real work: ``--processes P`` processes (``/bin/sleep``) spread over
``--nodes N`` nodes (``P / N`` slots per agent). Figures: from the first
``schedule_process`` to every process ``500-RUNNING``, and from the first
``terminate_process`` to an empty pool (every VM record final, no agent left),
then the ``supervisord``/``pd-eeagent`` processes still running (0 expected)::

    .venv/bin/python bench/scaling.py --driver local --nodes 20 --processes 200

Interrupted (Ctrl-C, SIGTERM), the bench stops the provisioner and destroys every
node it started before it exits: nothing is left running. ``--directory DIR``
keeps the state there instead of a temporary directory; ``--hold S`` keeps the
full pool S seconds before the demand ends.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


def run_once(
    nodes: int, driver: Any, parallel: int, state_dir: Path | None, hold: float = 0.0
) -> dict[str, float]:
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
    try:
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
        time.sleep(hold)
    finally:
        # Also on Ctrl-C: no create may finish after the nodes are destroyed.
        stop.set()
        loop.join()
        provisioner.close()
        destroy_all(driver)
        if service is not None:
            service.stop()
    return result


def destroy_all(driver: Any) -> None:
    """Destroy every node the driver lists (what an interrupted run started too).

    The nodes are destroyed at once, each in a thread: one after another, every
    node's agents would still be running (or starting) while the previous node's
    stop is waited for, and the waits would add up.
    """
    try:
        nodes = driver.list_nodes()
        if not nodes:
            return
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="destroy") as pool:
            futures = [
                pool.submit(driver.destroy_node, node.node_id, node.provider_id) for node in nodes
            ]
        for future in futures:
            future.result()  # every destroy was waited for; the first error is raised
    finally:
        driver.close()


def wait_heartbeats(store: MemoryStore, nodes: int, demand: float) -> float:
    """Milliseconds until every node has a registered agent (via the heartbeat sink)."""
    while len({r.node_id for r in store.list_resources()}) < nodes:
        time.sleep(0.01)
    return (time.perf_counter() - demand) * 1000


def local_driver(state_dir: Path, owner: str = "bench") -> Any:
    from dispatcher.provisioner.agents import AgentTemplate
    from dispatcher.provisioner.local import LocalDriver
    from eeagent.supervisor import stop_left_supervisord
    from pdcommon.settings import LocalSiteSettings

    return LocalDriver(
        LocalSiteSettings(heartbeat=1),
        template=AgentTemplate(amqp_uri="embedded://"),
        state_dir=state_dir,
        owner=owner,
        stop_supervisord=stop_left_supervisord,
    )


def run_pool(
    nodes: int, processes: int, grace: float, state_dir: Path, hold: float = 0.0
) -> dict[str, float]:
    """The pool bench (module docstring): a dispatcher, a local site, real processes."""
    from dispatcher.client import ProcessDispatcherClient
    from dispatcher.service import DispatcherService
    from eeagent.supervisor import stop_left_supervisord
    from pdcommon.settings import load_settings

    slots = math.ceil(processes / nodes)
    settings = load_settings(
        overrides={
            "state_dir": str(state_dir),
            "dashi.sysname": f"bench{os.getpid()}",
            "processdispatcher.engines": {
                "engine1": {
                    "slots": slots,
                    "heartbeat_period": 1,
                    "heartbeat_warning": 5,
                    "heartbeat_missing": 15,
                }
            },
            "processdispatcher.default_engine": "engine1",
            "provisioner.driver": "local",
            "provisioner.sites": {
                "default": {"driver": "local", "heartbeat": 1, "scale_down_grace": grace}
            },
        }
    )
    service = DispatcherService.build(settings, stop_supervisord=stop_left_supervisord)
    service.start()
    client = ProcessDispatcherClient.from_settings(settings, timeout=60)
    upids = [f"p{index:04d}" for index in range(processes)]
    try:
        client.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["3600"]})
        demand = time.perf_counter()
        for upid in upids:
            client.schedule_process(upid, "sleeper", restart_mode="NEVER")
        scheduled = time.perf_counter()
        while _count(client, "500-RUNNING") < processes:
            time.sleep(0.2)
        running = time.perf_counter()
        nodes_used = len(client.dump().get("vms", {}))
        time.sleep(hold)
        end = time.perf_counter()
        for upid in upids:
            client.terminate_process(upid)
        while not _pool_empty(client, state_dir):
            time.sleep(0.2)
        empty = time.perf_counter()
        leftovers = len(_pool_processes(state_dir))
    finally:
        client.close()
        service.stop()
        destroy_all(local_driver(state_dir, owner=f"{settings.dashi.sysname}.process_dispatcher"))
    return {
        "scheduled_s": scheduled - demand,
        "all_running_s": running - demand,
        "nodes": nodes_used,
        "empty_s": empty - end,
        "leftovers": leftovers,
    }


def _count(client: Any, state: str) -> int:
    return sum(record["state"] == state for record in client.describe_processes())


def _pool_empty(client: Any, state_dir: Path) -> bool:
    vms = client.dump().get("vms", {}).values()
    final = all(vm["state"] in VMState.FINAL for vm in vms)
    return final and not list((state_dir / "nodes").glob("*/node.json"))


def _pool_processes(directory: Path) -> list[int]:
    """supervisord and pd-eeagent processes whose command line names ``directory``."""
    found = []
    needle = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and (b"eeagent" in cmdline or b"supervisord" in cmdline):
            found.append(int(entry.name))
    return found


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, action="append", help="N (repeatable)")
    parser.add_argument("--driver", choices=["fake", "local"], default="fake")
    parser.add_argument("--latency", type=float, default=0.0, help="fake create latency (s)")
    parser.add_argument("--parallel", type=int, default=8, help="max_parallel")
    parser.add_argument("--processes", type=int, help="pool bench: processes (--driver local)")
    parser.add_argument("--grace", type=float, default=0.0, help="pool bench: scale_down_grace")
    parser.add_argument(
        "--hold", type=float, default=0.0, help="seconds to keep the pool before ending the demand"
    )
    parser.add_argument("--directory", type=Path, help="state directory (default: a temporary one)")
    args = parser.parse_args()
    # SIGINT too, explicitly: a process started in the background by a
    # non-interactive shell (``cmd &``, as when test suites run side by side)
    # inherits SIGINT ignored, and Python then installs no handler for it, so
    # Ctrl-C or ``kill -INT`` would be lost and the pool held for --hold seconds.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.processes:
            if args.driver != "local":
                parser.error("--processes needs --driver local")
            pool_bench(args)
        else:
            create_bench(args)
    except KeyboardInterrupt:
        print("interrupted: every node started was destroyed", flush=True)
        sys.exit(130)


def _state_dir(args: argparse.Namespace) -> Any:
    if args.directory is not None:
        args.directory.mkdir(parents=True, exist_ok=True)
        return contextlib.nullcontext(str(args.directory))
    return tempfile.TemporaryDirectory(prefix="pdb-", dir="/tmp")


def pool_bench(args: argparse.Namespace) -> None:
    for count in args.nodes or [20]:
        with _state_dir(args) as tmp:
            figures = run_pool(count, args.processes, args.grace, Path(tmp), args.hold)
        print(
            f"nodes={count} processes={args.processes} grace={args.grace:g}s: "
            f"all scheduled {figures['scheduled_s']:.1f} s, "
            f"all 500-RUNNING {figures['all_running_s']:.1f} s (on {figures['nodes']:.0f} nodes), "
            f"pool empty {figures['empty_s']:.1f} s after the terminates, "
            f"leftover agents/supervisords: {figures['leftovers']:.0f}",
            flush=True,
        )


def create_bench(args: argparse.Namespace) -> None:
    counts = args.nodes or ([10, 100, 500] if args.driver == "fake" else [4])
    print(f"driver={args.driver} max_parallel={args.parallel} latency={args.latency}s")
    print(
        f"{'N':>5} {'first create':>13} {'all issued':>11} {'all created':>12} {'heartbeats':>11}",
        flush=True,
    )
    for count in counts:
        with _state_dir(args) as tmp:
            state_dir = Path(tmp) if args.driver == "local" else None
            if state_dir is not None:
                driver = local_driver(state_dir)
            else:
                driver = FakeDriver(latency=args.latency)
            figures = run_once(count, driver, args.parallel, state_dir, args.hold)
        beats = figures.get("heartbeats_ms")
        print(
            f"{count:>5} {figures['first_create_ms']:>10.1f} ms {figures['all_issued_ms']:>8.1f} ms"
            f" {figures['all_created_ms']:>9.1f} ms"
            + (f" {beats:>8.1f} ms" if beats is not None else f" {'-':>11}"),
            flush=True,
        )


if __name__ == "__main__":
    main()
