"""RPC round trips: our client and service vs raw kombu vs the legacy dashi style.

Runs sequential calls on each transport and prints calls/s, p50 and p99 latency,
and the ratio of ours to raw kombu (target on RabbitMQ: >= 0.8).

    .venv/bin/python bench/rpc.py                       # embedded + a private RabbitMQ
    .venv/bin/python bench/rpc.py --amqp-uri amqp://guest:guest@127.0.0.1:5672//
    .venv/bin/python bench/rpc.py --calls 2000 --no-rabbitmq
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import kombu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.service import RpcService


def measure(call: Callable[[int], object], calls: int) -> dict[str, float]:
    for i in range(min(50, calls)):  # warm-up
        call(i)
    latencies = []
    started = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    latencies.sort()
    return {
        "calls_per_s": calls / total,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


class RawServer:
    """Plain kombu request/reply: replies carry the correlation id."""

    def __init__(self, broker: BrokerConfig, name: str) -> None:
        self.broker, self.name = broker, name
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        self.ready.wait(30)

    def run(self) -> None:
        exchange = self.broker.kombu_exchange()
        queue = kombu.Queue(self.name, exchange, routing_key=self.name, auto_delete=True)
        with self.broker.connection() as connection:
            producer = kombu.Producer(connection.default_channel, exchange=exchange)

            def on_request(body, message):
                producer.publish(
                    {"result": body["args"]["x"], "error": None},
                    routing_key=message.properties["reply_to"],
                    correlation_id=message.properties["correlation_id"],
                    serializer="json",
                )
                message.ack()

            with kombu.Consumer(connection.default_channel, [queue], callbacks=[on_request]):
                self.ready.set()
                while not self.stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.2)


class RawClient:
    """Plain kombu client with one long-lived reply queue and correlation ids."""

    def __init__(self, broker: BrokerConfig, target: str) -> None:
        self.target = target
        self.connection = broker.connection()
        self.exchange = broker.kombu_exchange()
        self.reply = uuid.uuid4().hex
        queue = kombu.Queue(
            self.reply, self.exchange, routing_key=self.reply, exclusive=not broker.is_embedded
        )
        self.producer = kombu.Producer(self.connection.default_channel, exchange=self.exchange)
        self.pending: dict[str, object] = {}
        self.consumer = kombu.Consumer(
            self.connection.default_channel, [queue], callbacks=[self.on_reply], no_ack=True
        )
        self.consumer.consume()

    def on_reply(self, body, message):
        self.pending[message.properties["correlation_id"]] = body["result"]

    def call(self, x: int) -> object:
        correlation_id = uuid.uuid4().hex
        self.producer.publish(
            {"op": "echo", "args": {"x": x}},
            routing_key=self.target,
            reply_to=self.reply,
            correlation_id=correlation_id,
            serializer="json",
        )
        while correlation_id not in self.pending:
            self.connection.drain_events(timeout=5)
        return self.pending.pop(correlation_id)

    def close(self) -> None:
        self.connection.release()


def bench_transport(label: str, broker: BrokerConfig, calls: int) -> None:
    service = RpcService(broker, "bench")
    service.handle("echo", lambda x: x, validate=False)
    service.start()
    raw = RawServer(broker, "rawbench")
    results: dict[str, dict[str, float]] = {}
    try:
        raw_client = RawClient(broker, "rawbench")
        results["raw kombu (long-lived reply queue)"] = measure(raw_client.call, calls)
        raw_client.close()
        with RpcClient(broker, "bench-client") as ours:
            results["ours (long-lived reply queue)"] = measure(
                lambda i: ours.call("bench", "echo", x=i), calls
            )
        with RpcClient(broker, "legacy-client", legacy_reply_queues=True) as legacy:
            results["legacy dashi style (fresh queue per call)"] = measure(
                lambda i: legacy.call("bench", "echo", x=i), max(50, calls // 5)
            )
    finally:
        raw.stop.set()
        raw.thread.join(5)
        service.stop()
    print(f"\n{label}: {calls} sequential calls")
    print(f"  {'style':45} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, figures in results.items():
        print(
            f"  {name:45} {figures['calls_per_s']:9.0f} "
            f"{figures['p50_ms']:8.2f} {figures['p99_ms']:8.2f}"
        )
    ours = results["ours (long-lived reply queue)"]["calls_per_s"]
    raw_rate = results["raw kombu (long-lived reply queue)"]["calls_per_s"]
    legacy_rate = results["legacy dashi style (fresh queue per call)"]["calls_per_s"]
    print(f"  ratio ours / raw kombu:    {ours / raw_rate:.2f}")
    print(f"  ratio ours / legacy dashi: {ours / legacy_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--amqp-uri", help="RabbitMQ to use (default: start a private one)")
    parser.add_argument("--no-rabbitmq", action="store_true")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as state_dir:
        bench_transport(
            "embedded://", BrokerConfig(uri="embedded://", state_dir=Path(state_dir)), options.calls
        )
    if options.no_rabbitmq:
        return
    server = None
    uri = options.amqp_uri
    if uri is None:
        from tests.infra import RabbitMQServer

        server = RabbitMQServer()
        server.start()
        uri = server.uri
    try:
        bench_transport("RabbitMQ", BrokerConfig(uri=uri, sysname="bench"), options.calls)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
