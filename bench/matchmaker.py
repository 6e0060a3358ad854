"""Matchmaker throughput: queued processes placed per second.

Usage::

    .venv/bin/python bench/matchmaker.py                        # SQLite, launches counted
    .venv/bin/python bench/matchmaker.py --start-postgres       # ... and a private PostgreSQL
    .venv/bin/python bench/matchmaker.py --start-rabbitmq       # launches published to RabbitMQ
    .venv/bin/python bench/matchmaker.py --processes 1000 --agents 100   # a quick run

The fleet is ``--agents`` eeagents of ``--slots`` slots, one node each, and
``--processes`` queued ``200-REQUESTED`` processes (defaults: 1,000 x 10 and 10,000).
Two figures per store:

* **decision**: :func:`dispatcher.placement.plan` alone, on records already read;
* **end to end**: one :meth:`Matchmaker.matchmake` pass from a cold start: the
  queue, processes, resources and nodes read, every decision stored (resources,
  processes, queue), subscribers told, and every launch handed to the messenger
  (counted, or published to RabbitMQ with ``--start-rabbitmq``/``--amqp-uri``).

The target of issue 5 is >= 2,000 placements/s end to end on PostgreSQL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatcher.engines import EngineRegistry
from dispatcher.matchmaker import QUEUED_STATES, Matchmaker
from dispatcher.messaging import Messenger
from dispatcher.model import Node, Process, Resource
from dispatcher.placement import plan
from dispatcher.store.base import Store
from dispatcher.store.sql import SqlStore
from dispatcher.transitions import ProcessStateMachine
from pdcommon.settings import EngineSettings
from pdcommon.states import ProcessState

EXECUTABLE = {"exec": "/bin/sleep", "argv": ["1000"]}


class CountingMessenger:
    """Counts the messages it is given (no broker)."""

    def __init__(self) -> None:
        self.count = 0

    def fire(self, target: str, op: str, **args: Any) -> None:
        self.count += 1


def fill(store: Store, agents: int, slots: int, processes: int) -> None:
    for a in range(agents):
        node_id = f"node{a:05d}"
        name = f"agent{a:05d}"
        store.add_node(
            Node(node_id=node_id, domain_id="pd_domain_engine1", resources=[name], state_time=a)
        )
        store.add_resource(
            Resource(
                resource_id=name,
                node_id=node_id,
                slot_count=slots,
                properties={"engine": "engine1", "resource_id": name},
            )
        )
    for p in range(processes):
        upid = f"proc{p:06d}"
        store.add_process(
            Process(
                upid=upid,
                definition={"definition_id": "d1", "executable": EXECUTABLE},
                state=ProcessState.REQUESTED,
            )
        )
        store.enqueue(upid, 0)


def bench(name: str, url: str, args: argparse.Namespace, messenger: Messenger) -> None:
    engines = EngineRegistry({"engine1": EngineSettings(slots=args.slots)}, "engine1")
    store = SqlStore(url, create=True)
    try:
        started = time.perf_counter()
        fill(store, args.agents, args.slots, args.processes)
        print(
            f"{name}: filled {args.agents} agents x {args.slots} slots, "
            f"{args.processes} queued in {time.perf_counter() - started:.1f} s"
        )
        entries = store.list_queued()
        records = {p.upid: p for p in store.list_processes(QUEUED_STATES)}
        resources = store.list_resources()
        nodes = {n.node_id: n for n in store.list_nodes()}
        started = time.perf_counter()
        decided = plan(entries, records, resources, nodes, engines, now=time.time())
        elapsed = time.perf_counter() - started
        placed = sum(1 for d in decided.decisions if type(d).__name__ == "Assign")
        print(
            f"  decision alone: {placed} placements in {elapsed:.3f} s = {placed / elapsed:,.0f}/s"
        )
        matchmaker = Matchmaker(
            store, messenger, engines, transitions=ProcessStateMachine(store, messenger)
        )
        started = time.perf_counter()
        result = matchmaker.matchmake()
        elapsed = time.perf_counter() - started
        count = len(result.assigned)
        stored = sum(len(r.assigned) for r in store.list_resources())
        print(
            f"  end to end:     {count} placements in {elapsed:.3f} s = {count / elapsed:,.0f}/s "
            f"(stored assignments: {stored}, queue left: {len(store.list_queued())})"
        )
    finally:
        store.close()


@contextmanager
def private_postgres() -> Iterator[str]:
    from tests.infra import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        server.create_database("bench_matchmaker")
        yield server.url("bench_matchmaker")
    finally:
        server.close()


@contextmanager
def rabbitmq_messenger(uri: str | None) -> Iterator[Messenger]:
    from dashi.broker import BrokerConfig
    from dashi.client import RpcClient
    from dashi.messenger import RpcMessenger

    server = None
    if uri is None:
        from tests.infra import RabbitMQServer

        server = RabbitMQServer()
        server.start()
        uri = server.uri
    client = RpcClient(BrokerConfig(uri=uri, sysname="bench"), "process_dispatcher")
    try:
        yield RpcMessenger(client)
    finally:
        client.close()
        if server is not None:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=1_000)
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database")
    parser.add_argument("--start-postgres", action="store_true", help="start a private one")
    parser.add_argument("--amqp-uri", help="publish launches to this RabbitMQ")
    parser.add_argument("--start-rabbitmq", action="store_true", help="start a private one")
    args = parser.parse_args()
    broker = (
        rabbitmq_messenger(args.amqp_uri)
        if args.amqp_uri or args.start_rabbitmq
        else nullcontext(CountingMessenger())
    )
    with broker as messenger:
        print(f"launches: {type(messenger).__name__}")
        with tempfile.TemporaryDirectory() as tmp:
            bench("sqlite", f"sqlite:///{tmp}/bench.db", args, messenger)
        if args.postgres:
            bench("postgresql", args.postgres, args, messenger)
        elif args.start_postgres:
            with private_postgres() as url:
                bench("postgresql", url, args, messenger)


if __name__ == "__main__":
    main()
