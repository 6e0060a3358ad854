"""The embedded transport cleans up after itself: expiry, sweeps, claimed messages, upgrade.

Every test runs the real transport, mostly across processes; time is moved
forward by giving the sweep a later ``now`` rather than by waiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import kombu

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.service import SERVICE_QUEUE_EXPIRES_MS, RpcService
from dashi.transport.folder import AUTO_DELETE_GRACE, BrokerFolder
from tests.support.waiting import waiter

LATER = 3600.0  # seconds: longer than any expiry used here


def later() -> float:
    return time.time() + LATER


def queues(state_dir: Path) -> list[str]:
    return sorted(os.listdir(state_dir / "broker" / "queues"))


def message_files(state_dir: Path) -> list[Path]:
    return [path for path in (state_dir / "broker").rglob("*.msg") if path.is_file()]


def queued_message_files(state_dir: Path) -> list[Path]:
    return [path for path in message_files(state_dir) if "queues" in path.parts]


def binding_entries(state_dir: Path) -> list[str]:
    top = state_dir / "broker" / "bindings"
    return sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.is_file())


_CONSUMER = """
import sys
from pathlib import Path
from dashi.broker import BrokerConfig
from dashi.service import RpcService
svc = RpcService(BrokerConfig(uri="embedded://", state_dir=Path({state_dir!r})), {name!r})
svc.handle("ping", lambda value: value)
svc.start()
print("ready", flush=True)
sys.stdin.read()
"""

_CALLER = """
import sys
from pathlib import Path
from dashi.broker import BrokerConfig
from dashi.client import RpcClient
rpc = RpcClient(BrokerConfig(uri="embedded://", state_dir=Path({state_dir!r})), "caller")
print("calling", flush=True)
rpc.call("slow", "wait", timeout=60)
"""


def spawn(script: str, **fields: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script).format(**fields)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def test_an_unused_queue_with_an_expiry_goes_with_its_bindings_and_messages(tmp_path):
    # Given a queue declared with x-expires, bound, holding messages, consumed by nobody
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    exchange = broker.kombu_exchange()
    queue = kombu.Queue(
        "agent1", exchange, routing_key="agent1", queue_arguments={"x-expires": 60_000}
    )
    kept = kombu.Queue("kept", exchange, routing_key="kept")
    with broker.connection() as connection:
        queue(connection.default_channel).declare()
        kept(connection.default_channel).declare()
        with kombu.Producer(connection, exchange=exchange) as producer:
            for _ in range(5):
                producer.publish({"op": "cleanup"}, routing_key="agent1", serializer="json")
                producer.publish({"op": "x"}, routing_key="kept", serializer="json")
    folder = BrokerFolder(tmp_path / "broker")
    # When a sweep runs before the expiry / Then nothing goes
    folder.sweep(wait=True)
    assert queues(tmp_path) == ["agent1", "kept"]
    # When a sweep runs after the expiry
    report = folder.sweep(now=later(), wait=True)
    # Then the queue, its binding and its messages are gone; the queue without expiry stays
    assert report is not None and report.queues_deleted == 1 and report.messages_deleted == 5
    assert queues(tmp_path) == ["kept"]
    assert binding_entries(tmp_path) == ["default_dashi_exchange/kept/kept"]
    assert len(message_files(tmp_path)) == 5
    # And a publish to the deleted queue's key is dropped, as by a broker
    with broker.connection() as connection, kombu.Producer(connection, exchange=exchange) as p:
        p.publish({"op": "late"}, routing_key="agent1", serializer="json")
    assert queues(tmp_path) == ["kept"] and len(message_files(tmp_path)) == 5


def test_a_consumer_keeps_its_queue_alive_until_it_is_killed(tmp_path):
    # Given a service (x-expires as on RabbitMQ) in another process
    proc = spawn(_CONSUMER, state_dir=str(tmp_path), name="agent1")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        folder = BrokerFolder(tmp_path / "broker")
        # When sweeps run long after the expiry while it consumes / Then its queue stays
        folder.sweep(now=later(), wait=True)
        assert queues(tmp_path) == ["agent1"]
        with RpcClient(BrokerConfig(uri="embedded://", state_dir=tmp_path), "c") as rpc:
            assert rpc.call("agent1", "ping", value=1) == 1
        # When it is killed with SIGKILL (nothing of it runs any more)
        kill(proc)
        # Then its queue lives on until its expiry, then goes with its binding
        folder.sweep(wait=True)
        assert queues(tmp_path) == ["agent1"]
        folder.sweep(now=time.time() + SERVICE_QUEUE_EXPIRES_MS / 1000 + 1, wait=True)
        assert queues(tmp_path) == []
        assert binding_entries(tmp_path) == []
        assert os.listdir(tmp_path / "broker" / "leases") == []
    finally:
        if proc.poll() is None:
            kill(proc)


def test_a_client_killed_mid_call_leaves_nothing_once_swept(tmp_path):
    # Given a service that answers only when told to, and a client process waiting on it
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    release = threading.Event()
    service = RpcService(broker, "slow")
    service.handle("wait", lambda: release.wait(30))
    service.start()
    caller = spawn(_CALLER, state_dir=str(tmp_path))
    try:
        assert caller.stdout is not None and caller.stdout.readline().strip() == "calling"
        folder = BrokerFolder(tmp_path / "broker")
        wait_for(lambda: len(queues(tmp_path)) == 2)
        # When the client is killed mid-call and the service then answers it
        kill(caller)
        release.set()
        # the reply nobody reads, once it is in its queue (not while still being
        # written under broker/tmp: it is renamed into the queue afterwards)
        wait_for(lambda: len(queued_message_files(tmp_path)) == 1)
        # Then a sweep after the auto-delete grace removes its reply queue, the
        # reply, its binding and its lease; the service's queue stays
        folder.sweep(now=time.time() + AUTO_DELETE_GRACE + 1, wait=True)
        assert queues(tmp_path) == ["slow"]
        assert message_files(tmp_path) == []
        assert binding_entries(tmp_path) == ["default_dashi_exchange/slow/slow"]
        assert len(os.listdir(tmp_path / "broker" / "leases")) == 1  # the service's
    finally:
        release.set()
        if caller.poll() is None:
            kill(caller)
        service.stop()


def test_a_client_that_closes_leaves_no_queue_binding_or_lease(tmp_path):
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    service = RpcService(broker, "svc")
    service.handle("ping", lambda value: value)
    service.start()
    try:
        # Given clients that call and close, the new way and the legacy dashi way
        for legacy in (False, True):
            with RpcClient(broker, "c", legacy_reply_queues=legacy) as rpc:
                assert rpc.call("svc", "ping", value=legacy) is legacy
        # Then only the service's queue, binding and lease remain, with no sweep
        assert queues(tmp_path) == ["svc"]
        assert binding_entries(tmp_path) == ["default_dashi_exchange/svc/svc"]
        assert len(os.listdir(tmp_path / "broker" / "leases")) == 1
        assert message_files(tmp_path) == []
    finally:
        service.stop()


_CLAIMER = """
import os, sys
from pathlib import Path
from dashi.broker import BrokerConfig
broker = BrokerConfig(uri="embedded://", state_dir=Path({state_dir!r}))
connection = broker.connection()
connection.connect()
transport = connection.transport
lease = transport.lease()
qdir = transport.folder.queue_dir("work")
name = sorted(n for n in os.listdir(qdir) if n.endswith(".msg"))[0]
# the first half of a read: claimed, then the process dies before reading it
os.rename(qdir / name, qdir / "claimed" / (name + "~" + lease.id))
print("claimed", flush=True)
sys.stdin.read()
"""


def test_a_message_claimed_by_a_consumer_that_died_goes_back_to_its_queue(tmp_path):
    # Given a queue with one message
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    exchange = broker.kombu_exchange()
    queue = kombu.Queue("work", exchange, routing_key="work")
    with broker.connection() as connection:
        queue(connection.default_channel).declare()
        with kombu.Producer(connection, exchange=exchange) as producer:
            producer.publish({"n": 1}, routing_key="work", serializer="json")
    # And a consumer process that claimed it and was killed before reading it
    claimer = spawn(_CLAIMER, state_dir=str(tmp_path))
    assert claimer.stdout is not None and claimer.stdout.readline().strip() == "claimed"
    folder = BrokerFolder(tmp_path / "broker")
    folder.sweep(wait=True)
    assert len(os.listdir(folder.queue_dir("work") / "claimed")) == 1  # its claimer lives
    kill(claimer)
    # When a sweep runs
    report = folder.sweep(wait=True)
    # Then the message is back in its queue and delivered to the next consumer
    assert report is not None and report.claimed_returned == 1
    with broker.connection() as connection:
        message = queue(connection.default_channel).get(no_ack=True)
        assert message is not None and message.payload == {"n": 1}


def test_sweeps_racing_with_a_live_consumer_and_publisher_lose_nothing(tmp_path):
    # Given a consumer of a queue with an expiry, a publisher, and sweeps that
    # believe every idle queue long expired
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    exchange = broker.kombu_exchange()
    queue = kombu.Queue("busy", exchange, routing_key="busy", queue_arguments={"x-expires": 1})
    folder = BrokerFolder(tmp_path / "broker")
    received: list[int] = []
    count = 300
    with broker.connection() as connection:

        def on_message(body, message):
            received.append(body["i"])
            message.ack()

        with kombu.Consumer(connection, [queue], callbacks=[on_message]):
            stop = threading.Event()

            def sweeping() -> None:
                while not stop.is_set():
                    folder.sweep(now=later(), wait=True)

            def publishing() -> None:
                with broker.connection() as out, kombu.Producer(out, exchange=exchange) as producer:
                    for i in range(count):
                        producer.publish({"i": i}, routing_key="busy", serializer="json")

            threads = [threading.Thread(target=sweeping), threading.Thread(target=publishing)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while len(received) < count and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
            stop.set()
            for thread in threads:
                thread.join(30)
    # Then every message arrived, once
    assert sorted(received) == list(range(count))


def test_a_state_directory_of_the_earlier_layout_is_migrated_when_opened(tmp_path):
    # Given the earlier flat layout (kombu's filesystem transport): a service
    # queue holding a request, and an orphan reply queue holding a reply
    old = tmp_path / "broker"
    options = {
        "data_folder_in": str(old / "messages"),
        "data_folder_out": str(old / "messages"),
        "control_folder": str(old / "control"),
    }
    (old / "messages").mkdir(parents=True)
    (old / "claimed").mkdir()
    exchange = kombu.Exchange("default_dashi_exchange", type="direct", durable=False)
    with kombu.Connection("filesystem://", transport_options=options) as connection:
        for name in ("svc", "deadbeef"):
            kombu.Queue(name, exchange, routing_key=name)(connection.default_channel).declare()
        with kombu.Producer(connection, exchange=exchange) as producer:
            producer.publish(
                {"op": "ping", "args": {"value": 7}}, routing_key="svc", serializer="json"
            )
            producer.publish({"result": 1}, routing_key="deadbeef", serializer="json")
    # When the service of the new version starts on it
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    seen: list[object] = []
    service = RpcService(broker, "svc")
    service.handle("ping", lambda value: seen.append(value))
    service.start()
    try:
        # Then the waiting request is served, and the earlier folders are gone
        wait_for(lambda: seen == [7])
        assert not (old / "messages").exists() and not (old / "control").exists()
        # And the orphan queue expires like any unused queue
        BrokerFolder(old).sweep(now=later(), wait=True)
        assert queues(tmp_path) == ["svc"]
        assert message_files(tmp_path) == []
    finally:
        service.stop()


def test_everything_the_transport_creates_is_private_whatever_the_umask(tmp_path):
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path / "state")
    previous = os.umask(0)
    try:
        # Given the most permissive umask, a service, a client and a sweep
        service = RpcService(broker, "svc")
        service.handle("ping", lambda value: value)
        service.start()
        try:
            with RpcClient(broker, "c") as rpc:
                assert rpc.call("svc", "ping", value=1) == 1
                BrokerFolder(tmp_path / "state" / "broker").sweep(wait=True)
        finally:
            service.stop()
    finally:
        os.umask(previous)
    # Then every directory is 0700 and every file 0600
    paths = [tmp_path / "state", *(tmp_path / "state").rglob("*")]
    loose = [
        f"{oct(stat.S_IMODE(p.lstat().st_mode))} {p}"
        for p in paths
        if stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)
    ]
    assert loose == []


wait_for = waiter(30.0)


def test_any_queue_name_works_and_leaves_nothing_once_deleted(tmp_path):
    # Given queues whose names are long, hold separators, dots or start with a dot
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    exchange = broker.kombu_exchange()
    names = ["x" * 300 + "/../y", "..", ".hidden", "a b%2Fc", "ünï"]
    with broker.connection() as connection:
        channel = connection.default_channel
        for name in names:
            queue = kombu.Queue(name, exchange, routing_key=name)
            queue(channel).declare()
            with kombu.Producer(channel, exchange=exchange) as producer:
                producer.publish({"to": name}, routing_key=name, serializer="json")
            # When a message is routed to each / Then it arrives in that queue only
            message = queue(channel).get(no_ack=True)
            assert message is not None and message.payload == {"to": name}
            queue(channel).delete()
    # And once deleted, nothing of them is left
    assert queues(tmp_path) == [] and binding_entries(tmp_path) == []
    assert os.listdir(tmp_path) == ["broker"]  # no name escaped the broker folder
