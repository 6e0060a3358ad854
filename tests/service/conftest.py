"""A real :class:`~dispatcher.service.DispatcherService` on RabbitMQ, with fake agents.

:class:`Harness` runs one dispatcher (its own sysname on the session broker, its own
SQLite or PostgreSQL database), a :class:`~dispatcher.client.ProcessDispatcherClient`
and :class:`~tests.support.fake_eeagent.FakeEEAgent` agents that heartbeat over the
broker. The object graph is the one ``DispatcherService.build`` makes, with two
seams the scenarios need: the matchmaker's need registrar (a
:class:`~dispatcher.needs.RecordingNeedSink`) and the messenger that carries its
launches (:class:`FlakyLaunches`).

The standard fixture is the legacy service tests': engines ``engine1``-``engine4`` with
4 slots each, ``default_engine engine1``, ``process_engines {"a.b.C": engine3,
"a.b": engine2}``, restart throttling 2 s, dispatch retry 30 s, and a definition
``D``. Heartbeat monitoring is on with a short period, and the fake agents
heartbeat twice a second.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dashi.errors import TransportError
from dispatcher.client import ProcessDispatcherClient
from dispatcher.messaging import Messenger
from dispatcher.needs import RecordingNeedSink
from dispatcher.service import DispatcherService
from pdcommon.settings import Settings, load_settings
from pdcommon.wire import broker_config
from tests.support.fake_eeagent import FakeEEAgent
from tests.support.waiting import waiter

#: Engine heartbeat settings: monitoring on, slack enough for a loaded machine.
HEARTBEATS = {"heartbeat_period": 1, "heartbeat_warning": 5, "heartbeat_missing": 10}
ENGINES: dict[str, dict[str, Any]] = {
    "engine1": {"slots": 4, "base_need": 1, **HEARTBEATS},
    "engine2": {"slots": 4, **HEARTBEATS},
    "engine3": {"slots": 4, **HEARTBEATS},
    "engine4": {"slots": 4, "base_need": 1, **HEARTBEATS},
}
PROCESS_ENGINES = {"a.b.C": "engine3", "a.b": "engine2"}
#: Seconds between the fake agents' periodic heartbeats.
AGENT_HEARTBEAT = 0.5
#: The standard definition and its executable.
DEFINITION = "D"
EXECUTABLE = {"module": "some.module", "class": "SomeClass"}
#: Seconds a wait for a state may take before the test fails.
WAIT = 30.0


wait_for = waiter(WAIT)


def make_settings(
    tmp_path: Path,
    amqp_uri: str,
    *,
    sysname: str | None = None,
    database_url: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """The standard fixture's settings (dotted ``overrides`` win)."""
    values: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "server.amqp.uri": amqp_uri,
        "dashi.sysname": sysname or f"svc{uuid.uuid4().hex[:10]}",
        "processdispatcher.database_url": database_url or f"sqlite:///{tmp_path}/pd.db",
        "processdispatcher.engines": ENGINES,
        "processdispatcher.default_engine": "engine1",
        "processdispatcher.process_engines": PROCESS_ENGINES,
        "processdispatcher.restart_throttling_config": {"minimum_time_between_starts": 2},
        "processdispatcher.dispatch_retry_seconds": 30,
        "provisioner.driver": "static",
    }
    values.update(overrides or {})
    return load_settings(overrides=values)


class FlakyLaunches:
    """A messenger that loses launches while :attr:`failing` (launch retries).

    While failing, the first ``launch_process`` is silently dropped and every
    later one raises :class:`~dashi.errors.TransportError`, as an unreachable
    broker would. Other messages, and every launch once :attr:`failing` is
    cleared, go through to ``inner``.
    """

    def __init__(self, inner: Messenger) -> None:
        self.inner = inner
        self.failing = True
        self.attempts: list[tuple[str, str, int]] = []  # (outcome, upid, round)
        self._lock = threading.Lock()

    def fire(self, target: str, op: str, **args: Any) -> None:
        if op == "launch_process":
            with self._lock:
                failing = self.failing
                lost = failing and not self.attempts
                outcome = "lost" if lost else "error" if failing else "sent"
                self.attempts.append((outcome, args["u_pid"], args["round"]))
            if lost:
                return
            if failing:
                raise TransportError(f"could not send {op} to {target}: broker unreachable")
        self.inner.fire(target, op, **args)

    def outcomes(self) -> list[str]:
        with self._lock:
            return [outcome for outcome, _, _ in self.attempts]


def build_service(
    settings: Settings,
    *,
    sink: RecordingNeedSink | None = None,
    launches: Callable[[Messenger], Messenger] | None = None,
) -> DispatcherService:
    """``DispatcherService.build`` with a need sink and a launch messenger.

    Args:
        settings: the dispatcher's settings.
        sink: receives the matchmaker's needs (through a ``NeedRegistrar``).
        launches: wraps the messenger the matchmaker launches through.
    """
    return DispatcherService.build(settings, need_sink=sink, launch_messenger=launches)


class Harness:
    """One running dispatcher, a client, and fake agents added per test."""

    def __init__(
        self, settings: Settings, service: DispatcherService, *, start: bool = True
    ) -> None:
        self.settings = settings
        self.broker = broker_config(settings)
        self.service = service
        self.agents: dict[str, FakeEEAgent] = {}
        if start:
            service.start()
        self.client = ProcessDispatcherClient.from_settings(settings, timeout=20)

    # -- nodes and agents ---------------------------------------------------------------

    def add_node(
        self,
        node_id: str,
        engine: str = "engine1",
        *,
        agents: int = 1,
        properties: dict[str, Any] | None = None,
        launch_state: str = "500-RUNNING",
    ) -> list[FakeEEAgent]:
        """Bring up node ``node_id`` for ``engine``: announce it, start ``agents`` agents."""
        self.client.node_state(node_id, f"pd_domain_{engine}", "600-RUNNING", properties=properties)
        return self.add_agents(node_id, agents, launch_state=launch_state)

    def add_agents(
        self, node_id: str, count: int = 1, *, launch_state: str = "500-RUNNING"
    ) -> list[FakeEEAgent]:
        """Start ``count`` more agents on an announced node; wait until registered."""
        first = sum(1 for agent in self.agents.values() if agent.node_id == node_id)
        started = []
        for index in range(first, first + count):
            agent = FakeEEAgent(
                self.broker,
                f"{node_id}_ee{index}",
                node_id,
                launch_state=launch_state,
                heartbeat_interval=AGENT_HEARTBEAT,
            )
            self.agents[agent.name] = agent
            started.append(agent.start())
        for agent in started:
            wait_for(lambda a=agent: a.name in self.resources(), what=f"{agent.name} registered")
        return started

    def resources(self) -> dict[str, Any]:
        return dict(self.client.dump()["resources"])

    # -- processes ----------------------------------------------------------------------

    def define(self, definition_id: str = DEFINITION, executable: Any = None) -> None:
        self.client.create_definition(definition_id, "supd", executable or EXECUTABLE)

    def describe(self, upid: str) -> dict[str, Any]:
        record = self.client.describe_process(upid)
        assert record is not None, upid
        return dict(record)

    def wait_state(self, upid: str, state: str, timeout: float = WAIT) -> dict[str, Any]:
        seen: list[Any] = [None]

        def reached() -> Any:
            seen[0] = record = self.client.describe_process(upid)
            return record if record is not None and record["state"] == state else None

        try:
            return dict(wait_for(reached, timeout, f"{upid} in {state}"))
        except AssertionError as exc:
            last = seen[0] and {k: seen[0].get(k) for k in ("state", "round", "assigned")}
            raise AssertionError(f"{exc}; last record {last}") from None

    def wait_states(self, upids: list[str], state: str) -> dict[str, dict[str, Any]]:
        return {upid: self.wait_state(upid, state) for upid in upids}

    def wait_held(self, agent: FakeEEAgent, upids: set[str]) -> None:
        """Wait until the dispatcher's record of ``agent`` holds exactly ``upids``."""

        def held() -> bool:
            resource = self.resources().get(agent.name)
            return resource is not None and {a[1] for a in resource["assigned"]} == upids

        wait_for(held, what=f"{agent.name} holding {sorted(upids)}")

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.client.close()
        self.service.stop()


@pytest.fixture
def harness_factory(tmp_path: Path, amqp_uri: str) -> Iterator[Callable[..., Harness]]:
    """Start harnesses: ``harness_factory(sink=..., launches=..., overrides={dotted: value})``."""
    made: list[Harness] = []

    def make(
        *,
        sink: RecordingNeedSink | None = None,
        launches: Callable[[Messenger], Messenger] | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> Harness:
        settings = make_settings(tmp_path, amqp_uri, overrides=overrides)
        harness = Harness(settings, build_service(settings, sink=sink, launches=launches))
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def pd(harness_factory: Callable[..., Harness]) -> Harness:
    """The standard fixture, with definition ``D``."""
    harness = harness_factory()
    harness.define()
    return harness
