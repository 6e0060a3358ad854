"""Cost of the engine status (needs) in ``dump`` and ``list_engines``.

Usage::

    .venv/bin/python bench/engine_status.py                  # 10,000 and 100,000 processes
    .venv/bin/python bench/engine_status.py --sizes 10000    # one size

A SQLite store (a temporary file) is filled with N processes over 4 engines: 80 %
running on 100-slot agents (one per node), 10 % queued (``300-WAITING``), 10 %
ended; then the same with the dispatcher ``SYSTEM_BOOTING`` and the queued ones held
back (``150-UNSCHEDULED_PENDING``). Printed per size, median of 5 runs:
``engine_statuses`` alone (what ``list_engines`` adds), ``system_status`` alone,
``dump`` without the new keys (a core without engines) and ``dump`` with them.
Figures depend on the machine and its load (the CI machines are shared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatcher.core import ProcessDispatcherCore
from dispatcher.engine_status import engine_statuses, system_status
from dispatcher.engines import EngineRegistry
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Node, Process, Resource
from dispatcher.store.sql import SqlStore
from dispatcher.transitions import ProcessStateMachine
from pdcommon.settings import EngineSettings
from pdcommon.states import ProcessDispatcherState, ProcessState

ENGINES = ("engine1", "engine2", "engine3", "engine4")
SLOTS = 100
RUNS = 5


def fill(store: SqlStore, count: int) -> None:
    """``count`` processes: 80 % running on agents, 10 % queued, 10 % ended."""
    agents: dict[str, Resource] = {}
    current_of: dict[str, Resource] = {}
    for index in range(count):
        upid = f"p{index:07d}"
        engine = ENGINES[index % len(ENGINES)]
        kind = (index // len(ENGINES)) % 10
        state = (
            ProcessState.WAITING
            if kind == 8
            else ProcessState.TERMINATED
            if kind == 9
            else ProcessState.RUNNING
        )
        process = Process(
            upid=upid,
            definition={"definition_id": "d", "executable": {"exec": "/bin/true"}},
            state=state,
            constraints={"engine": engine},
            configuration={"process": {"n": index}},
        )
        if state == ProcessState.RUNNING:
            current = current_of.get(engine)
            if current is None or len(current.assigned) >= SLOTS:
                number = len([r for r in agents if r.startswith(f"{engine}-")])
                current = Resource(
                    resource_id=f"{engine}-ee{number}",
                    node_id=f"{engine}-node{number}",
                    slot_count=SLOTS,
                    properties={"engine": engine},
                )
                agents[current.resource_id] = current
                current_of[engine] = current
            current.assigned.append((upid, 0))
            process.assigned = current.resource_id
        store.add_process(process)
        if state == ProcessState.WAITING:
            store.enqueue(upid, 0)
    for resource in agents.values():
        store.add_node(
            Node(
                resource.node_id,
                domain_id=f"pd_domain_{resource.properties['engine']}",
                resources=[resource.resource_id],
            )
        )
        store.add_resource(resource)


def hold_back(store: SqlStore) -> None:
    """The queued processes held back by a system boot."""
    store.clear_queue()
    for process in store.list_processes([ProcessState.WAITING]):
        process.state = ProcessState.UNSCHEDULED_PENDING
        store.update_process(process)
    store.set_pd_state(ProcessDispatcherState.SYSTEM_BOOTING)


def median_ms(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def measure(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{tmp}/bench.db", create=True)
        try:
            began = time.perf_counter()
            fill(store, count)
            store.set_pd_state(ProcessDispatcherState.OK)
            store.set_initialized()
            print(f"{count:,} processes ({time.perf_counter() - began:.1f} s to fill):")
            engines = EngineRegistry(
                {e: EngineSettings(slots=SLOTS) for e in ENGINES}, default_engine="engine1"
            )
            messenger = RecordingMessenger()
            transitions = ProcessStateMachine(store, messenger)
            plain = ProcessDispatcherCore(store, messenger, transitions=transitions)
            full = ProcessDispatcherCore(store, messenger, transitions=transitions, engines=engines)
            for label in ("OK", "SYSTEM_BOOTING"):
                if label == "SYSTEM_BOOTING":
                    hold_back(store)
                statuses = engine_statuses(store, engines)
                needs = {e: s["need"] for e, s in statuses.items()}
                print(f"  {label}: needs {needs}")
                print(
                    f"    engine_statuses (list_engines)  {median_ms(lambda: engine_statuses(store, engines)):8.1f} ms"
                )
                print(
                    f"    system_status                   {median_ms(lambda: system_status(store)):8.1f} ms"
                )
                print(f"    dump without engines/system     {median_ms(plain.dump):8.1f} ms")
                print(f"    dump with engines and system    {median_ms(full.dump):8.1f} ms")
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    for count in args.sizes:
        measure(count)


if __name__ == "__main__":
    main()
