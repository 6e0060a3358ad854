"""Restarts on the embedded transport, the counterpart of a broker restart on RabbitMQ.

The embedded transport has no broker process: its "broker" is the state directory,
and what restarts is the process serving the queue (the dispatcher). Requests
wait in the queue's folder while nobody serves it, so a client that stays open
across the restart carries on, and a call sent during the outage is answered once
the service is back within the call's timeout.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.service import RpcService

_SERVICE_SCRIPT = """
import sys
from pathlib import Path
from dashi.broker import BrokerConfig
from dashi.service import RpcService
svc = RpcService(BrokerConfig(uri="embedded://", state_dir=Path({state_dir!r})), "remote")
generation = {generation!r}
svc.handle("ping", lambda value: [generation, value])
svc.start()
print("ready", flush=True)
sys.stdin.read()
svc.stop()
"""


class ServiceProcess:
    """An RPC service named ``remote`` in its own interpreter."""

    def __init__(self, state_dir: Path, generation: str) -> None:
        script = textwrap.dedent(_SERVICE_SCRIPT).format(
            state_dir=str(state_dir), generation=generation
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_pipes()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def test_a_client_carries_on_after_the_serving_process_is_killed_and_restarted(tmp_path):
    # Given a service in another process and a client that has talked to it once
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    first = ServiceProcess(tmp_path, "first")
    try:
        with RpcClient(broker, "c") as rpc:
            assert rpc.call("remote", "ping", value=1) == ["first", 1]
            # When the service process dies without any cleanup and a new one starts
            first.kill()
            second = ServiceProcess(tmp_path, "second")
            try:
                # Then the same client gets answers from the new process
                assert rpc.call("remote", "ping", value=2, timeout=30) == ["second", 2]
                rpc.fire("remote", "ping", value=3)
                assert rpc.call("remote", "ping", value=4, timeout=30) == ["second", 4]
            finally:
                second.stop()
    finally:
        first.stop()


def test_a_call_made_while_the_service_is_down_is_answered_when_it_returns(tmp_path):
    # Given a service that was running and has stopped (its queue binding remains)
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    first = ServiceProcess(tmp_path, "first")
    with RpcClient(broker, "c") as rpc:
        assert rpc.call("remote", "ping", value=0) == ["first", 0]
        first.stop()
        result: dict[str, object] = {}
        started = threading.Event()

        def call() -> None:
            started.set()
            try:
                result["value"] = rpc.call("remote", "ping", value=7, timeout=60)
            except Exception as exc:  # recorded for the assertion below
                result["error"] = exc

        # When a call is sent during the outage and the service then comes back
        thread = threading.Thread(target=call)
        thread.start()
        assert started.wait(5)
        second = ServiceProcess(tmp_path, "second")
        try:
            thread.join(90)
            # Then the waiting call gets its answer from the new process
            assert not thread.is_alive()
            assert result == {"value": ["second", 7]}
        finally:
            second.stop()


def test_a_service_restarted_after_its_message_folder_was_wiped_serves_an_open_client(tmp_path):
    # Given a service and a client on one state directory
    broker = BrokerConfig(uri="embedded://", state_dir=tmp_path)
    service = RpcService(broker, "svc")
    service.handle("ping", lambda value: value)
    service.start()
    try:
        with RpcClient(broker, "c") as rpc:
            assert rpc.call("svc", "ping", value=1) == 1
            service.stop()
            # When the service's queue is lost while the service is down (an
            # operator removed its folder from the state directory)
            shutil.rmtree(tmp_path / "broker" / "queues" / "svc")
            service = RpcService(broker, "svc")
            service.handle("ping", lambda value: value * 10)
            service.start()
            # Then the restarted service serves the open client, whose reply
            # queue and binding survived
            assert rpc.call("svc", "ping", value=2, timeout=30) == 20
    finally:
        service.stop()
