"""Store throughput: ops/s of the basic operations on the memory, SQLite and PostgreSQL stores.

Usage::

    .venv/bin/python bench/store_ops.py                       # memory + SQLite (tmp file)
    .venv/bin/python bench/store_ops.py --postgres URL        # ... + an existing PostgreSQL db
    .venv/bin/python bench/store_ops.py --start-postgres      # ... + a private throw-away cluster

Measured per backend: add_process, get_process, update_process, enqueue (single
thread), a schedule-like sequence (get_definition, add_process, enqueue,
update_process) from 8 threads, and list_processes over 100,000 processes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatcher.model import Definition, Process
from dispatcher.selectors import ProcessFilter, parse_selector
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from dispatcher.store.schema import processes
from dispatcher.store.sql import SqlStore

DEFINITION = {
    "definition_id": "d1",
    "definition_type": "supd",
    "executable": {"exec": "/bin/sleep", "argv": ["1000"]},
}


def make_process(upid: str) -> Process:
    return Process(
        upid=upid,
        definition=dict(DEFINITION),
        name=upid,
        configuration={"process": {"x": 1}},
        constraints={"engine": "engine1"},
        subscribers=[["dest", "op"]],
    )


def rate(label: str, count: int, fn: Callable[[int], None]) -> float:
    began = time.perf_counter()
    for i in range(count):
        fn(i)
    elapsed = time.perf_counter() - began
    print(f"  {label:<28} {count / elapsed:>10,.0f} ops/s")
    return count / elapsed


def concurrent_schedule(store: Store, threads: int, per_thread: int) -> None:
    prefix = uuid.uuid4().hex[:6]

    def work(t: int) -> None:
        for i in range(per_thread):
            upid = f"s{prefix}-{t}-{i}"
            store.get_definition("d1")
            process = make_process(upid)
            store.add_process(process)
            store.enqueue(upid, 0)
            process.state = "200-REQUESTED"
            store.update_process(process)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    total = threads * per_thread
    print(
        f"  {'schedule-like x' + str(threads) + ' threads':<28} {total / elapsed:>10,.0f} sched/s"
    )


#: Bulk-filled processes fall in this many groups, each with a ``shard`` label of
#: four values: the filtered listings select a tenth and a quarter of them.
GROUPS = 10


def bulk_process(i: int) -> Process:
    process = make_process(f"bulk-{i}")
    process.group = f"g{i % GROUPS}"
    process.labels = {"shard": str(i % 4)}
    return process


def bulk_fill(store: Store, count: int) -> None:
    if isinstance(store, SqlStore):
        columns = [c.name for c in processes.columns if c.name != "id"]
        rows = []
        for i in range(count):
            p = bulk_process(i)
            row = {k: getattr(p, k, None) for k in columns}
            row["group_name"] = p.group
            row["version"] = 1
            rows.append(row)
        with store._engine.begin() as conn:
            conn.execute(processes.insert(), rows)
    else:
        for i in range(count):
            store.add_process(bulk_process(i))


def timed_listing(label: str, listing: Callable[[], list[Any]]) -> None:
    began = time.perf_counter()
    listed = listing()
    elapsed = time.perf_counter() - began
    print(f"  {label + f' ({len(listed):,})':<36} {elapsed:>8.3f} s")


def bench(name: str, store: Store, n: int, list_size: int) -> None:
    print(f"{name}:")
    store.add_definition(Definition("d1", "supd", DEFINITION["executable"]))
    rate("add_process", n, lambda i: store.add_process(make_process(f"p{i}")))
    rate("get_process", n, lambda i: store.get_process(f"p{i}"))
    records = [store.get_process(f"p{i}") for i in range(n)]

    def update(i: int) -> None:
        record = records[i]
        assert record is not None
        record.state = "500-RUNNING"
        store.update_process(record)

    rate("update_process", n, update)
    rate("enqueue", n, lambda i: store.enqueue(f"p{i}", 0))
    concurrent_schedule(store, 8, max(1, n // 4))
    bulk_fill(store, list_size - len(store.list_processes()))
    began = time.perf_counter()
    listed = store.list_processes()
    elapsed = time.perf_counter() - began
    print(f"  list_processes({len(listed):,})       {elapsed:>10.2f} s")
    del listed  # freeing 100,000 records takes a while: keep it out of the next figure
    began = time.perf_counter()
    listed = store.list_processes(["500-RUNNING"])
    elapsed = time.perf_counter() - began
    print(f"  list_processes(RUNNING: {len(listed):,}) {elapsed:>8.3f} s")
    del listed
    timed_listing("process dicts, no filter", store.list_process_dicts)
    by_group = ProcessFilter(group="g3")
    timed_listing("process dicts, group=g3", lambda: store.list_process_dicts(by_group))
    by_label = ProcessFilter(labels=parse_selector("shard=1"))
    timed_listing("process dicts, shard=1", lambda: store.list_process_dicts(by_label))
    store.close()


@contextmanager
def private_postgres() -> Iterator[str]:
    from tests.infra import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        server.create_database("bench")
        yield server.url("bench")
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--list-size", type=int, default=100_000)
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database")
    parser.add_argument("--start-postgres", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    if not args.skip_memory:
        bench("memory", MemoryStore(), args.n, args.list_size)
    with tempfile.TemporaryDirectory() as tmp:
        bench("sqlite", SqlStore(f"sqlite:///{tmp}/pd.db", create=True), args.n, args.list_size)
    if args.postgres:
        bench("postgresql", SqlStore(args.postgres, create=True), args.n, args.list_size)
    elif args.start_postgres:
        with private_postgres() as url:
            bench("postgresql", SqlStore(url, create=True), args.n, args.list_size)


if __name__ == "__main__":
    main()
