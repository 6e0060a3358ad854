"""Fault: a flood of heartbeats, junk and valid mixed, while a client asks for a process.

A real :class:`~dispatcher.service.DispatcherService` (two RPC workers, SQLite) on
RabbitMQ serves three registered agents. The health handler applying heartbeats is
held shut by a gate, so that "the flood is not applied yet" is a fact rather than a
race. Agents and junk senders fire 3,000 heartbeats onto the dispatcher's queue the
way agents do (op ``heartbeat``, no ``reply-to``), then a client calls
``describe_process``:

* the call is answered while no heartbeat of the flood has been applied: heartbeats
  do not hold the RPC workers, and client requests are not stuck behind them;
* the whole flood is taken off the queue while the gate is still shut;
* once the gate opens, each agent's latest heartbeat is the one applied (at most
  one more besides the one held at the gate), and the store says what it reports.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dashi.client import RpcClient
from dashi.messenger import RpcMessenger
from dashi.service import RpcService
from dispatcher.client import ProcessDispatcherClient
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.service import DispatcherService, engine_registry
from dispatcher.store.sql import SqlStore
from pdcommon.states import ProcessState
from pdcommon.wire import broker_config
from tests.faults.faultkit import wait_for
from tests.health.conftest import put_process
from tests.service.conftest import make_settings
from tests.support.wiring import health_parts, make_core

pytestmark = [pytest.mark.rabbitmq]

AGENTS = ("flood_a0", "flood_a1", "flood_a2")
JUNK_SENDERS = ("junk0", "junk1")
HEARTBEATS = 3000
#: Seconds the gate may stay shut, and a call may wait, before the test fails.
WAIT = 30.0
PD = "process_dispatcher"


class GatedHandler(HeartbeatHandler):
    """The health handler, whose heartbeats wait for :attr:`gate` and are recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.applied: list[tuple[Any, Any]] = []  # (sender, timestamp)
        self._lock = threading.Lock()

    def heartbeat(self, message: Any, sender: Any = None) -> None:
        self.entered.set()
        self.gate.wait(WAIT)
        with self._lock:
            stamp = message.get("timestamp") if isinstance(message, dict) else None
            self.applied.append((sender, stamp))
        super().heartbeat(message, sender)

    def applied_since(self, sender: str, since: datetime) -> list[datetime]:
        """Timestamps of ``sender``'s heartbeats applied, stamped after ``since``."""
        with self._lock:
            stamps = [datetime.fromisoformat(s) for who, s in self.applied if who == sender]
        return [stamp for stamp in stamps if stamp > since]


def _message(agent: str, stamp: datetime, upids: list[str]) -> dict[str, Any]:
    return {
        "eeagent_id": agent,
        "node_id": "node1",
        "timestamp": stamp.isoformat(),
        "processes": [
            {"upid": upid, "round": "0", "state": [500, "RUNNING"], "msg": "None"} for upid in upids
        ],
    }


def _junk(index: int) -> dict[str, Any]:
    kind = index % 3
    if kind == 0:
        return {"timestamp": "yesterday", "processes": []}
    if kind == 1:
        return {"timestamp": datetime.now(UTC).isoformat(), "processes": "all of them"}
    return {"processes": [{"upid": "x", "round": "not a number", "state": [1, "?"]}]}


def test_a_describe_process_sent_during_a_heartbeat_flood_is_answered_before_the_flood_is_applied(
    tmp_path: Path, amqp_uri: str
) -> None:
    settings = make_settings(tmp_path, amqp_uri, overrides={"processdispatcher.rpc_workers": 2})
    broker = broker_config(settings)
    store = SqlStore(settings.database_url, create=True)
    messenger_client = RpcClient(broker, PD)
    messenger = RpcMessenger(messenger_client)
    engines = engine_registry(settings)
    parts = health_parts(store, messenger, engines)
    handler = GatedHandler(
        store,
        messenger,
        engines,
        transitions=parts.transitions,
        registration=parts.registration,
    )
    service = DispatcherService(
        settings,
        store=store,
        core=make_core(store, messenger, transitions=parts.transitions),
        heartbeats=handler,
        rpc=RpcService(broker, PD, workers=2),
        messenger_client=messenger_client,
    )
    senders = {name: RpcClient(broker, name) for name in (*AGENTS, *JUNK_SENDERS)}
    client = ProcessDispatcherClient.from_settings(settings, timeout=WAIT)
    service.start()
    try:
        # Given three registered agents, each holding two PENDING processes
        # (stamped in the past: a future timestamp would count as the time it arrives)
        now = datetime.now(UTC)
        client.node_state("node1", "pd_domain_engine1", "600-RUNNING")
        for agent in AGENTS:
            stamp = now - timedelta(minutes=10)
            senders[agent].fire(PD, "heartbeat", message=_message(agent, stamp, []))
        wait_for(lambda: all(store.get_resource(a) for a in AGENTS), what="agents registered")
        held = {agent: [f"{agent}-p{i}" for i in range(2)] for agent in AGENTS}
        for agent, upids in held.items():
            for upid in upids:
                put_process(store, upid, ProcessState.PENDING, assigned=agent)
        # and the heartbeat handler held shut inside a first heartbeat of agent 0
        handler.gate.clear()
        handler.entered.clear()
        applied_before = len(handler.applied)
        start = now - timedelta(minutes=5)
        senders[AGENTS[0]].fire(PD, "heartbeat", message=_message(AGENTS[0], start, []))
        assert handler.entered.wait(WAIT)

        # When agents and junk senders fire a flood of heartbeats
        last: dict[str, datetime] = {}
        for index in range(HEARTBEATS):
            if index % 2:
                name = (*AGENTS, *JUNK_SENDERS)[index % 5]
                senders[name].fire(PD, "heartbeat", message=_junk(index))
                continue
            agent = AGENTS[index % 3]
            stamp = start + timedelta(milliseconds=1 + index)
            senders[agent].fire(PD, "heartbeat", message=_message(agent, stamp, held[agent]))
            last[agent] = stamp
        # and a client asks for a process
        record = client.describe_process(held[AGENTS[1]][0])

        # Then it is answered while not one heartbeat of the flood was applied
        assert record is not None
        assert record["state"] == ProcessState.PENDING
        assert len(handler.applied) == applied_before
        # and the whole flood leaves the queue while the handler is still shut
        intake = service.intake
        assert intake is not None
        wait_for(
            lambda: intake.counts.accepted + intake.counts.rejected >= HEARTBEATS + len(AGENTS) + 1,
            what="the flood taken off the queue",
        )
        assert len(handler.applied) == applied_before
        assert intake.counts.rejected == HEARTBEATS // 2

        # When the handler opens
        handler.gate.set()
        # Then each agent's latest heartbeat is applied last, and at most one other of
        # the flood (the one an idle applier took at once) before it
        wait_for(lambda: intake.idle, what="the intake idle")
        for agent in AGENTS:
            applied = handler.applied_since(f"{broker.sysname}.{agent}", start)
            assert applied[-1] == last[agent]
            assert len(applied) <= 2
            resource = store.get_resource(agent)
            assert resource is not None
            assert resource.last_heartbeat is not None
            assert datetime.fromisoformat(resource.last_heartbeat) == last[agent]
            for upid in held[agent]:
                process = store.get_process(upid)
                assert process is not None and process.state == ProcessState.RUNNING
    finally:
        handler.gate.set()
        client.close()
        for sender in senders.values():
            sender.close()
        service.stop()
