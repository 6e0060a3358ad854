"""The embedded transport across processes, and its fixes over kombu's filesystem one."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import threading
import time

import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import RpcTimeoutError
from dashi.service import RpcService


def test_a_service_in_another_process_answers_calls(tmp_path):
    # Given a service running in a separate process on the same state directory
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from dashi.broker import BrokerConfig
        from dashi.service import RpcService
        svc = RpcService(BrokerConfig(uri="embedded://", state_dir=Path({str(tmp_path)!r})), "remote")
        svc.handle("mul", lambda a, b: a * b)
        svc.start()
        print("ready", flush=True)
        sys.stdin.read()
        svc.stop()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        # When this process calls it / Then the answers come back
        with RpcClient(BrokerConfig(uri="embedded://", state_dir=tmp_path), "c") as rpc:
            assert [rpc.call("remote", "mul", a=i, b=3) for i in range(50)] == [
                i * 3 for i in range(50)
            ]
    finally:
        proc.stdin.close()
        proc.wait(10)


def test_messages_written_by_another_process_are_never_read_half_written(tmp_path):
    # Given a writer process publishing large messages as fast as it can
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    exchange = broker.kombu_exchange()
    queue = kombu.Queue("bulk", exchange, routing_key="bulk")
    with broker.connection() as connection:
        queue(connection.default_channel).declare()
    count = 300
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        import kombu
        from dashi.broker import BrokerConfig
        broker = BrokerConfig(uri="embedded://", state_dir=Path({str(tmp_path)!r}))
        with broker.connection() as c, kombu.Producer(c, exchange=broker.kombu_exchange()) as p:
            for i in range({count}):
                p.publish({{"i": i, "pad": "x" * 200000}}, routing_key="bulk", serializer="json")
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script])
    received: list[int] = []
    # When this process consumes concurrently / Then every message arrives whole, once
    with broker.connection() as connection:

        def on_message(body, message):
            assert len(body["pad"]) == 200000
            received.append(body["i"])
            message.ack()

        with kombu.Consumer(connection, [queue], callbacks=[on_message]):
            deadline = time.monotonic() + 60
            while len(received) < count and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
    writer.wait(30)
    assert sorted(received) == list(range(count))


def test_two_consumers_of_one_queue_never_receive_the_same_message(tmp_path):
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    exchange = broker.kombu_exchange()
    queue = kombu.Queue("shared", exchange, routing_key="shared")
    with broker.connection() as connection:
        queue(connection.default_channel).declare()
        with kombu.Producer(connection, exchange=exchange) as producer:
            for i in range(400):
                producer.publish({"i": i}, routing_key="shared", serializer="json")
    seen: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        with broker.connection() as connection:

            def on_message(body, message):
                with lock:
                    seen.append(body["i"])
                message.ack()

            with kombu.Consumer(connection, [queue], callbacks=[on_message]):
                idle_since = time.monotonic()
                while time.monotonic() - idle_since < 1.0:
                    try:
                        connection.drain_events(timeout=0.2)
                        idle_since = time.monotonic()
                    except TimeoutError:
                        pass

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(seen) == list(range(400))


def test_a_wait_for_messages_ends_at_once_when_another_thread_wakes_it(tmp_path):
    # Given a consumer blocked in drain_events with a long timeout
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path, sysname="wake")
    with broker.connection() as connection:
        connection.connect()
        channel = connection.channel()
        queue = kombu.Queue("idle", broker.kombu_exchange(), routing_key="idle")
        outcome: list[BaseException] = []

        def drain() -> None:
            try:
                connection.drain_events(timeout=60)
            except BaseException as exc:
                outcome.append(exc)

        with kombu.Consumer(channel, queues=[queue], callbacks=[lambda body, msg: None]):
            waiter = threading.Thread(target=drain, daemon=True)
            waiter.start()
            # When another thread wakes it (as RpcService.stop does)
            connection.transport.wake()
            waiter.join(30)
        # Then it ends long before its timeout, as a timeout
        assert not waiter.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)


def test_a_client_creates_no_broker_folder_and_a_call_names_the_missing_one(tmp_path):
    # Given a state directory where no service ever ran
    state = tmp_path / "state"
    broker = BrokerConfig(uri="embedded://", state_dir=state)
    with RpcClient(broker, "c") as rpc:
        # When a client fires and calls / Then the fire is dropped (no queue could
        # take it) and the call's timeout names the folder and the daemon to start
        rpc.fire("process_dispatcher", "op")
        with pytest.raises(RpcTimeoutError) as info:
            rpc.call("process_dispatcher", "dump", timeout=0.3)
    assert info.value.reason == (
        f"no reply within 0.3s: the embedded broker's folder {state}/broker does not "
        "exist (is pd-dispatcher running?)"
    )
    # And nothing was created
    assert not state.exists()


def test_a_call_made_before_the_broker_folder_exists_is_answered_once_a_service_starts(
    tmp_path,
):
    # Given a call waiting on a state directory where nothing ran yet
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    answer: dict[str, object] = {}

    def call() -> None:
        with RpcClient(broker, "c") as rpc:
            answer["value"] = rpc.call("late", "ping", timeout=60)

    caller = threading.Thread(target=call)
    caller.start()
    # When the service starts (creating the folder)
    service = RpcService(broker, "late")
    service.handle("ping", lambda: "pong")
    service.start()
    try:
        caller.join(60)
    finally:
        service.stop()
    # Then the call is answered
    assert answer == {"value": "pong"}
