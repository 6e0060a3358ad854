"""Client latency during a heartbeat flood.

Usage::

    .venv/bin/python bench/flood.py                     # a private RabbitMQ, 20,000 heartbeats
    .venv/bin/python bench/flood.py --amqp-uri URI --heartbeats 50000 --senders 8
    .venv/bin/python bench/flood.py --embedded          # the broker-less transport

A dispatcher (``DispatcherService.build``, SQLite, in this process) serves a node
with ``--agents`` registered agents, each holding two placed processes. Then
``--senders`` processes fire ``--heartbeats`` heartbeats onto the dispatcher's queue
the way agents do (op ``heartbeat``, no ``reply-to``, a ``sender`` header), as fast
as they can: valid ones from the agents (each a full snapshot reporting its
processes ``500-RUNNING`` with a rising timestamp) mixed with junk (malformed
messages, and well-formed ones from agents nobody knows). Meanwhile a client calls
``describe_process`` in a loop. Prints the flood's publish and drain times, the
``describe_process`` latencies during the flood (p50, p99, max), and whether each
agent's latest heartbeat is the one stored. Target: p99 <= 1 s on RabbitMQ.

"Drained" means: every agent's ``last_heartbeat`` is the timestamp of the last
heartbeat it sent and every placed process is ``500-RUNNING``. The senders run on
the same machine as the dispatcher and the broker and compete with them for CPU:
the figures depend on the machine and its load (report them with the load average).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dispatcher.client import ProcessDispatcherClient
from dispatcher.service import DispatcherService
from pdcommon.settings import Settings, load_settings
from pdcommon.wire import broker_config

SYSNAME = "bench"
PD = "process_dispatcher"
#: Processes placed on each agent.
PER_AGENT = 2


def wait(predicate, timeout: float = 120.0, interval: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("timed out")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def junk(index: int) -> dict[str, Any]:
    """A heartbeat message the dispatcher must refuse or ignore."""
    kind = index % 4
    if kind == 0:
        return {"timestamp": "yesterday", "processes": []}
    if kind == 1:
        return {"timestamp": datetime.now(UTC).isoformat(), "processes": "all of them"}
    if kind == 2:
        return {"processes": [{"upid": "x", "round": "not a number", "state": [1, "?"]}]}
    # Well-formed, from an agent on no known node: dropped at registration.
    return {"eeagent_id": "ghost", "timestamp": datetime.now(UTC).isoformat(), "processes": []}


def _send(
    broker: BrokerConfig,
    worker: int,
    agents: dict[str, list[str]],
    count: int,
    junk_share: float,
    start: Any,
    results: Any,
) -> None:
    """One sender process: ``count`` heartbeats, valid ones from its own ``agents``.

    Each agent's heartbeats go out on one connection, in order, as a real agent's
    do; junk goes out under the agents' names and under ``junk<worker>``.
    """
    names = sorted(agents)
    clients = {name: RpcClient(broker, name) for name in [*names, f"junk{worker}"]}
    last: dict[str, str] = {}
    junk_sent = 0
    start.wait()
    try:
        for index in range(count):
            if (index * 7919 % 1000) < junk_share * 1000:
                kind = index % 4
                # Well-formed ghosts (kind 3) only under the junk name: under an
                # agent's name they would be a valid heartbeat of that agent.
                name = f"junk{worker}" if kind == 3 or index % 2 else names[index % len(names)]
                clients[name].fire(PD, "heartbeat", message=junk(index))
                junk_sent += 1
                continue
            agent = names[index % len(names)]
            stamp = datetime.now(UTC).isoformat()
            message = {
                "eeagent_id": agent,
                "node_id": "node1",
                "timestamp": stamp,
                "processes": [
                    {"upid": upid, "round": "0", "state": [500, "RUNNING"], "msg": "None"}
                    for upid in agents[agent]
                ],
            }
            clients[agent].fire(PD, "heartbeat", message=message)
            last[agent] = stamp
    finally:
        for each in clients.values():
            each.close()
    results.put((last, junk_sent))


class Flood:
    """``senders`` processes firing ``total`` heartbeats, valid and junk mixed."""

    def __init__(
        self,
        broker: BrokerConfig,
        agents: dict[str, list[str]],
        total: int,
        senders: int,
        junk_share: float,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.start = context.Event()
        self.results = context.Queue()
        names = sorted(agents)
        self.processes = []
        for worker in range(senders):
            own = {name: agents[name] for name in names[worker::senders]}
            count = total // senders + (worker < total % senders)
            self.processes.append(
                context.Process(
                    target=_send,
                    args=(broker, worker, own, count, junk_share, self.start, self.results),
                    daemon=True,
                )
            )
        for process in self.processes:
            process.start()
        self.sent = total
        self.junk_sent = 0
        #: agent -> timestamp of the last valid heartbeat it sent.
        self.last: dict[str, datetime] = {}

    def run(self) -> float:
        """Fire the whole flood; return the seconds it took."""
        time.sleep(2.0)  # the sender processes connect
        started = time.perf_counter()
        self.start.set()
        for _ in self.processes:
            last, junk_sent = self.results.get(timeout=600)
            self.last.update({agent: datetime.fromisoformat(s) for agent, s in last.items()})
            self.junk_sent += junk_sent
        seconds = time.perf_counter() - started
        for process in self.processes:
            process.join(30)
        return seconds


def settings_for(tmp: str, uri: str, rpc_workers: int) -> Settings:
    return load_settings(
        overrides={
            "state_dir": f"{tmp}/state",
            "server.amqp.uri": uri,
            "dashi.sysname": SYSNAME,
            "processdispatcher.database_url": f"sqlite:///{tmp}/pd.db",
            "processdispatcher.engines": {"engine1": {"slots": 4}},
            "processdispatcher.rpc_workers": rpc_workers,
            "provisioner.driver": "static",
        }
    )


def run(uri: str, options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(tmp, uri, options.rpc_workers)
        broker = broker_config(settings)
        service = DispatcherService.build(settings)
        service.start()
        client = ProcessDispatcherClient.from_settings(settings, timeout=120)
        store = service.store
        try:
            # Given a node with registered agents, each holding placed processes
            client.node_state("node1", "pd_domain_engine1", "600-RUNNING")
            agents = [f"agent{i}" for i in range(options.agents)]
            for agent in agents:
                message = {
                    "eeagent_id": agent,
                    "node_id": "node1",
                    "timestamp": datetime.now(UTC).isoformat(),
                    "processes": [],
                }
                with RpcClient(broker, agent) as first:
                    first.fire(PD, "heartbeat", message=message)
            wait(lambda: all(store.get_resource(a) is not None for a in agents))
            client.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["600"]})
            upids = [f"p{i}" for i in range(options.agents * PER_AGENT)]
            for upid in upids:
                client.schedule_process(upid, "sleeper", restart_mode="NEVER")
            wait(lambda: all((p := store.get_process(u)) and p.assigned for u in upids))
            placed: dict[str, list[str]] = {agent: [] for agent in agents}
            for upid in upids:
                process = store.get_process(upid)
                assert process is not None and process.assigned
                placed[process.assigned].append(upid)

            # When the flood is fired while a client describes a process
            flood = Flood(broker, placed, options.heartbeats, options.senders, options.junk)
            latencies: list[float] = []
            done = threading.Event()

            def probe() -> None:
                with ProcessDispatcherClient.from_settings(settings, timeout=120) as prober:
                    while not done.is_set():
                        started = time.perf_counter()
                        prober.describe_process(upids[0])
                        latencies.append(time.perf_counter() - started)
                        time.sleep(0.01)

            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            started = time.perf_counter()
            publish_seconds = flood.run()

            def drained() -> bool:
                for agent, stamp in flood.last.items():
                    resource = store.get_resource(agent)
                    if resource is None or resource.last_heartbeat is None:
                        return False
                    if datetime.fromisoformat(resource.last_heartbeat) != stamp:
                        return False
                return all(
                    (p := store.get_process(u)) is not None and p.state == "500-RUNNING"
                    for u in upids
                )

            try:
                wait(drained, timeout=options.timeout, interval=0.05)
            except TimeoutError:
                for agent, stamp in sorted(flood.last.items()):
                    resource = store.get_resource(agent)
                    stored = resource.last_heartbeat if resource else None
                    print(f"  {agent}: sent last {stamp.isoformat()}, stored {stored}")
                print(f"  states: {[(u, (p := store.get_process(u)) and p.state) for u in upids]}")
                intake = getattr(service, "intake", None)
                if intake is not None:
                    print(f"  intake: {intake.counts}, pending {intake.pending}")
                raise
            drain_seconds = time.perf_counter() - started
            done.set()
            prober.join(120)

            # Then
            print(
                f"\n{options.label}: {flood.sent} heartbeats ({flood.junk_sent} junk) from "
                f"{options.senders} senders, {options.agents} agents, "
                f"{options.rpc_workers} RPC workers"
            )
            print(
                f"  published in {publish_seconds:.2f} s "
                f"({flood.sent / publish_seconds:.0f}/s); drained in {drain_seconds:.2f} s"
            )
            if latencies:
                print(
                    f"  describe_process during the flood: {len(latencies)} calls, "
                    f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
                    f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
                    f"max {max(latencies) * 1000:.1f} ms"
                )
            print("  latest heartbeat of every agent stored: yes")
            intake = getattr(service, "intake", None)
            if intake is not None:
                counts = intake.counts
                print(
                    f"  heartbeat intake: {counts.accepted} accepted, {counts.coalesced} coalesced, "
                    f"{counts.rejected} rejected, {counts.overflowed} overflowed, "
                    f"{counts.applied} applied"
                )
        finally:
            client.close()
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeats", type=int, default=20_000, help="heartbeats to fire")
    parser.add_argument("--senders", type=int, default=4, help="publishing processes")
    parser.add_argument("--agents", type=int, default=8, help="registered agents")
    parser.add_argument("--junk", type=float, default=0.5, help="share of junk heartbeats")
    parser.add_argument("--rpc-workers", type=int, default=8, help="dispatcher RPC workers")
    parser.add_argument("--amqp-uri", help="RabbitMQ to use (default: start a private one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the drain")
    parser.add_argument("--embedded", action="store_true", help="use the embedded transport")
    options = parser.parse_args()
    if options.embedded:
        options.label = "embedded://"
        run("embedded://", options)
        return
    options.label = "RabbitMQ"
    if options.amqp_uri:
        run(options.amqp_uri, options)
        return
    from tests.infra import RabbitMQServer

    server = RabbitMQServer()
    server.start()
    try:
        run(server.uri, options)
    finally:
        server.close()


if __name__ == "__main__":
    main()
