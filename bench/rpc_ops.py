"""Dispatcher RPC throughput and latency over real RPC, on SQLite and on PostgreSQL.

A real ``pd-dispatcher`` daemon (a subprocess, ``provisioner.driver: static``) serves
each store; clients are :class:`dispatcher.client.ProcessDispatcherClient` objects
in this process, one per client thread. Measured per store:

* ``schedule_process`` calls/s with 1 and with 8 concurrent clients (new upids);
* ``describe_process`` calls/s with 1 and with 8 concurrent clients;
* ``describe_processes`` and ``dump`` latency with 10,000 and 100,000 stored
  processes (the processes beyond those scheduled are bulk-inserted directly
  through the store's tables to save time).

Targets: >= 500 ``schedule_process``/s with 8 clients on PostgreSQL;
``describe_processes`` over 100,000 processes in under 2 s.

With ``--auth``, the daemon has a principal (``security.principals``) and only
``schedule_process`` is measured, in ``--rounds`` alternating rounds (the order
flips each round): unsigned clients, and clients signing every request as the principal (HMAC over the request,
timestamp and nonce, checked before the handler), at 1 and 8 clients. Target: the
authenticated rate within 10 % of the unsigned one.

Usage::

    .venv/bin/python bench/rpc_ops.py                  # private RabbitMQ + PostgreSQL, SQLite
    .venv/bin/python bench/rpc_ops.py --amqp-uri amqp://guest:guest@127.0.0.1:5672// \\
        --postgres postgresql+psycopg://user@127.0.0.1/empty_db
    .venv/bin/python bench/rpc_ops.py --transport embedded --backends sqlite
    .venv/bin/python bench/rpc_ops.py --calls 500 --sizes 10000   # a quicker run
    .venv/bin/python bench/rpc_ops.py --auth --backends postgres --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashi.broker import BrokerConfig  # noqa: E402
from dashi.client import RpcClient  # noqa: E402
from dashi.security import MessageSigner  # noqa: E402
from dispatcher.client import ProcessDispatcherClient  # noqa: E402
from dispatcher.model import Process  # noqa: E402
from dispatcher.store.schema import processes  # noqa: E402
from dispatcher.store.sql import SqlStore  # noqa: E402
from pdcommon.auth import principal_key  # noqa: E402

SERVICE = "process_dispatcher"
DEFINITION_ID = "bench-def"
EXECUTABLE = {"exec": "/bin/sleep", "argv": ["1000"]}
#: Seconds a listing call may take before the bench gives up on it.
LISTING_TIMEOUT = 300.0
BULK_CHUNK = 5000
#: The principal of ``--auth`` runs, and its secret.
PRINCIPAL, SECRET = "bench-operator", "bench-operator-secret-0123456789"


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """A ``pd-dispatcher`` subprocess on the given broker and database."""

    def __init__(
        self, state_dir: Path, amqp_uri: str, database_url: str, sysname: str, auth: bool = False
    ) -> None:
        self.state_dir = state_dir
        self.sysname = sysname
        self.amqp_uri = amqp_uri
        #: Whether new clients sign their requests as the principal.
        self.signing = False
        config: dict[str, Any] = {
            "server": {"amqp": {"uri": amqp_uri}},
            "dashi": {"sysname": sysname},
            "processdispatcher": {"database_url": database_url},
            "provisioner": {"driver": "static"},
        }
        if auth:
            config["security"] = {"principals": {PRINCIPAL: {"role": "operator", "secret": SECRET}}}
        self.config_path = state_dir / "dispatcher.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = state_dir / "dispatcher.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
        env["PD_STATE_DIR"] = str(state_dir)
        executable = Path(sys.executable).parent / "pd-dispatcher"
        self.proc = subprocess.Popen(
            [str(executable), "--config", str(self.config_path), "--log-level", "warning"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def broker(self) -> BrokerConfig:
        return BrokerConfig(uri=self.amqp_uri, sysname=self.sysname, state_dir=self.state_dir)

    def client(self, name: str, timeout: float = 30.0) -> ProcessDispatcherClient:
        signer = None
        if self.signing:
            signer = MessageSigner(principal_key(SECRET), principal=PRINCIPAL)
        rpc = RpcClient(self.broker(), name, timeout=timeout, signer=signer)
        return ProcessDispatcherClient(rpc, SERVICE, timeout=timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client("bench-probe", timeout=2.0) as probe:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"pd-dispatcher exited:\n{self.log_path.read_text()}")
                try:
                    probe.list_definitions()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# --------------------------------------------------------------------------- measurements


def concurrent_rate(
    daemon: Daemon, clients: int, calls: int, op: Callable[[ProcessDispatcherClient, int], Any]
) -> tuple[float, float, float]:
    """Run ``calls`` calls spread over ``clients`` threads; (calls/s, p50 ms, p99 ms)."""
    per_client = max(1, calls // clients)
    handles = [daemon.client(f"bench-{i}") for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def work(index: int) -> None:
        client, mine = handles[index], latencies[index]
        op(client, index * per_client)  # warm up the connection outside the timing
        barrier.wait()
        try:
            for i in range(1, per_client):
                began = time.perf_counter()
                op(client, index * per_client + i)
                mine.append(time.perf_counter() - began)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for handle in handles:
        handle.close()
    if errors:
        raise errors[0]
    merged = sorted(x for mine in latencies for x in mine)
    p99 = merged[max(0, int(len(merged) * 0.99) - 1)]
    return len(merged) / elapsed, statistics.median(merged) * 1000, p99 * 1000


def report_rate(label: str, figures: tuple[float, float, float]) -> None:
    rate, p50, p99 = figures
    print(f"  {label:<34} {rate:>8,.0f} calls/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        result = None  # free the previous listing before the next call
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return times, result


def bulk_insert(database_url: str, start: int, count: int) -> None:
    """Insert ``count`` RUNNING processes straight into the processes table."""
    store = SqlStore(database_url)
    try:
        columns = [c.name for c in processes.columns if c.name != "id"]
        prefix = uuid.uuid4().hex[:6]
        for offset in range(0, count, BULK_CHUNK):
            rows = []
            for i in range(start + offset, start + min(count, offset + BULK_CHUNK)):
                process = Process(
                    upid=f"bulk-{prefix}-{i}",
                    definition={"definition_id": DEFINITION_ID, "executable": EXECUTABLE},
                    name=f"bulk-{i}",
                    state="500-RUNNING",
                    configuration={"process": {"x": i}},
                    constraints={"engine": "default"},
                    subscribers=[["dest", "op"]],
                    assigned=f"eeagent-{i % 100}",
                    starts=1,
                    start_times=[1_700_000_000.0],
                )
                row = {name: getattr(process, name, None) for name in columns}
                row["version"] = 1
                rows.append(row)
            with store._engine.begin() as conn:
                conn.execute(processes.insert(), rows)
    finally:
        store.close()


def _scheduler(
    scheduled: list[str], lock: threading.Lock
) -> Callable[[str], Callable[[ProcessDispatcherClient, int], Any]]:
    def schedule(tag: str) -> Callable[[ProcessDispatcherClient, int], Any]:
        def op(client: ProcessDispatcherClient, i: int) -> Any:
            upid = f"{tag}-{i}"
            result = client.schedule_process(upid, DEFINITION_ID, restart_mode="NEVER")
            assert result["state"] == "200-REQUESTED", result
            with lock:
                scheduled.append(upid)
            return result

        return op

    return schedule


def bench_auth(label: str, daemon: Daemon, options: argparse.Namespace) -> None:
    """``schedule_process`` rates, unsigned and signed as a principal, alternating."""
    print(f"\n{label} ({options.transport} transport), authentication off/on:", flush=True)
    daemon.wait_ready()
    with daemon.client("bench-setup") as setup:
        setup.create_definition(DEFINITION_ID, "supd", EXECUTABLE)
    schedule = _scheduler([], threading.Lock())
    rates: dict[tuple[int, bool], list[float]] = {}
    for round_ in range(options.rounds):
        for clients in (1, 8):
            calls = options.calls if clients == 1 else options.calls * 2
            # The order flips every round, so neither side always runs on the
            # larger table or right after the other's load.
            for signing in (False, True) if round_ % 2 == 0 else (True, False):
                daemon.signing = signing
                tag = f"r{round_}-c{clients}-{'a' if signing else 'u'}"
                figures = concurrent_rate(daemon, clients, calls, schedule(tag))
                rates.setdefault((clients, signing), []).append(figures[0])
                report_rate(
                    f"round {round_ + 1}: schedule x{clients} {'signed' if signing else 'unsigned'}",
                    figures,
                )
    daemon.signing = False
    for clients in (1, 8):
        plain = statistics.median(rates[(clients, False)])
        signed = statistics.median(rates[(clients, True)])
        print(
            f"  median schedule_process x{clients}: unsigned {plain:,.0f}/s, "
            f"signed {signed:,.0f}/s ({(signed - plain) / plain * 100:+.1f} %)",
            flush=True,
        )


def bench_store(label: str, daemon: Daemon, database_url: str, options: argparse.Namespace) -> None:
    print(f"\n{label} ({options.transport} transport):", flush=True)
    daemon.wait_ready()
    with daemon.client("bench-setup") as setup:
        setup.create_definition(DEFINITION_ID, "supd", EXECUTABLE)
    scheduled: list[str] = []
    lock = threading.Lock()
    schedule = _scheduler(scheduled, lock)

    def describe(client: ProcessDispatcherClient, i: int) -> Any:
        upid = scheduled[i % len(scheduled)]
        record = client.describe_process(upid)
        assert record is not None and record["upid"] == upid
        return record

    for clients in (1, 8):
        calls = options.calls if clients == 1 else options.calls * 2
        figures = concurrent_rate(daemon, clients, calls, schedule(f"s{clients}"))
        report_rate(f"schedule_process x{clients} client(s)", figures)
    for clients in (1, 8):
        calls = options.calls if clients == 1 else options.calls * 2
        report_rate(
            f"describe_process x{clients} client(s)",
            concurrent_rate(daemon, clients, calls, describe),
        )

    stored = len(scheduled)
    with daemon.client("bench-lister", timeout=LISTING_TIMEOUT) as lister:
        for size in options.sizes:
            if size > stored:
                began = time.perf_counter()
                bulk_insert(database_url, stored, size - stored)
                print(
                    f"  (bulk-inserted {size - stored:,} processes in "
                    f"{time.perf_counter() - began:.1f} s)",
                    flush=True,
                )
                stored = size
            times, listed = timed(lister.describe_processes, options.repeat)
            assert len(listed) == stored, (len(listed), stored)
            listed = None
            print(
                f"  describe_processes ({stored:>7,} procs)   "
                f"best {min(times):6.2f} s   median {statistics.median(times):6.2f} s",
                flush=True,
            )
            times, dumped = timed(lister.dump, options.repeat)
            assert len(dumped["processes"]) == stored
            dumped = None
            print(
                f"  dump               ({stored:>7,} procs)   "
                f"best {min(times):6.2f} s   median {statistics.median(times):6.2f} s",
                flush=True,
            )


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def rabbitmq(uri: str | None) -> Iterator[str]:
    if uri is not None:
        yield uri
        return
    from tests.infra import RabbitMQServer

    server = RabbitMQServer()
    server.start()
    try:
        yield server.uri
    finally:
        server.close()


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from tests.infra import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        server.create_database("bench")
        yield server.url("bench")
    finally:
        server.close()


def run_backend(backend: str, amqp_uri: str, options: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if backend == "sqlite":
            url = f"sqlite:///{state_dir / 'bench.db'}"
            label = "SQLite"
        else:
            url = stack.enter_context(postgres(options.postgres))
            label = "PostgreSQL"
        daemon = Daemon(state_dir, amqp_uri, url, f"bench{uuid.uuid4().hex[:8]}", auth=options.auth)
        stack.callback(daemon.stop)
        try:
            if options.auth:
                bench_auth(label, daemon, options)
            else:
                bench_store(label, daemon, url, options)
        except BaseException:
            print(f"--- {daemon.log_path} ---\n{daemon.log_path.read_text()[-4000:]}")
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls", type=int, default=1000, help="calls with 1 client (twice as many with 8)"
    )
    parser.add_argument("--sizes", default="10000,100000", help="stored-process counts to list")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each listing")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--transport", choices=["rabbitmq", "embedded"], default="rabbitmq")
    parser.add_argument("--amqp-uri", help="RabbitMQ to use (default: start a private one)")
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database")
    parser.add_argument(
        "--auth", action="store_true", help="schedule rates unsigned vs signed as a principal"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of --auth")
    options = parser.parse_args()
    options.sizes = [int(size) for size in options.sizes.split(",") if size]
    backends = [b.strip() for b in options.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in {"sqlite", "postgres"}:
            parser.error(f"unknown backend {backend!r}")
    print(f"rpc_ops: {os.cpu_count()} CPUs, backends {', '.join(backends)}")
    if options.transport == "embedded":
        for backend in backends:
            run_backend(backend, "embedded://", options)
        return
    with rabbitmq(options.amqp_uri) as amqp_uri:
        for backend in backends:
            run_backend(backend, amqp_uri, options)


if __name__ == "__main__":
    main()
