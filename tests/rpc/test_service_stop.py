"""Stopping a service: idle workers end at once, a running handler finishes and is acknowledged."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from dashi import service as service_module
from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.service import RpcService

WAIT = 30.0


def test_stop_ends_idle_workers_without_waiting_out_their_drain(
    broker: BrokerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a service whose idle workers would otherwise block for a minute at a time
    # (no AMQP heartbeats either, whose frames would end a wait early)
    monkeypatch.setattr(service_module, "_DRAIN_SECONDS", 60.0)
    broker = dataclasses.replace(broker, heartbeat=0)
    svc = RpcService(broker, "idle", workers=2)
    svc.handle("ping", lambda: "pong")
    svc.start()
    with RpcClient(broker, timeout=WAIT) as client:
        assert client.call("idle", "ping") == "pong"
    workers = [t for t in threading.enumerate() if t.name.startswith("rpc-idle-")]
    assert len(workers) == 2
    # When it stops, giving its workers less time than one drain
    svc.stop(timeout=WAIT / 3)
    # Then every worker has ended
    assert not any(worker.is_alive() for worker in workers)


def test_a_handler_running_when_stop_begins_finishes_replies_and_is_not_redelivered(
    broker: BrokerConfig,
) -> None:
    # Given a service busy with a call
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(tag: str) -> str:
        calls.append(tag)
        started.set()
        release.wait(WAIT)
        return f"done {tag}"

    svc = RpcService(broker, "busy", workers=2)
    svc.handle("slow", slow)
    svc.start()
    replies: list[object] = []
    with RpcClient(broker, timeout=WAIT) as client:
        caller = threading.Thread(
            target=lambda: replies.append(client.call("busy", "slow", tag="a")), daemon=True
        )
        caller.start()
        assert started.wait(WAIT)
        # When the service is stopped meanwhile
        stopper = threading.Thread(target=svc.stop, daemon=True)
        stopper.start()
        release.set()
        stopper.join(WAIT)
        caller.join(WAIT)
    # Then the handler finished and its caller got the reply
    assert not stopper.is_alive() and not svc.running
    assert replies == ["done a"]
    # And the request was acknowledged: a new service on the queue does not get it again
    again = RpcService(broker, "busy", workers=1)
    again.handle("slow", slow)
    again.handle("ping", lambda: "pong")
    again.start()
    try:
        with RpcClient(broker, timeout=WAIT) as client:
            assert client.call("busy", "ping") == "pong"
        assert calls == ["a"]
    finally:
        again.stop()
