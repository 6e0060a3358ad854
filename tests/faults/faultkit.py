"""Helpers of the fault suite: real daemons, recording agents, load and figures.

* :class:`FaultDaemon`: a real ``pd-dispatcher`` subprocess (``tests.daemon``'s
  :class:`~tests.daemon.conftest.Daemon`) with the suite's engine configuration and,
  when wanted, a sysname shared with another daemon.
* :class:`RecordingAgent`: a :class:`~tests.support.fake_eeagent.FakeEEAgent` that
  behaves like a real eeagent on a repeated launch (a launch of a ``(upid, round)``
  it holds is a retry and is ignored) and counts every *start* it makes, so a test
  can tell "launched twice" (two starts) from a retried launch message.
* :class:`Load`: client threads scheduling processes and retrying each call until it
  is acknowledged, as a careful client does across an outage.
* :func:`figure`: prints a measured recovery time, records it as a junit property
  and appends it to ``$PD_FAULT_FIGURES`` (a JSON-lines file) when set; the figures
  are never asserted (``bench/faults.py`` collects them).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dashi.broker import BrokerConfig
from dispatcher.client import ProcessDispatcherClient
from pdcommon.errors import DispatcherError
from tests.daemon.conftest import Daemon
from tests.support.fake_eeagent import FakeEEAgent
from tests.support.waiting import waiter

#: Engine heartbeats of the suite: an agent silent for 4 s is MISSING.
HEARTBEATS = {"heartbeat_period": 1, "heartbeat_warning": 2, "heartbeat_missing": 4}
#: Heartbeats with more slack, for tests that load the dispatcher but kill no agent.
SLACK_HEARTBEATS = {"heartbeat_period": 1, "heartbeat_warning": 5, "heartbeat_missing": 15}
DOMAIN = "pd_domain_engine1"
DEFINITION = "D"
EXECUTABLE = {"exec": "/bin/true", "argv": []}
#: Seconds between a recording agent's periodic heartbeats.
AGENT_HEARTBEAT = 1.0
#: Seconds a recording agent waits after a change before it heartbeats.
CHANGE_COALESCE = 0.2


#: Polls for up to 60 s; the dispatcher may be unreachable for a while.
wait_for = waiter(60.0, interval=0.1, retry_on=(DispatcherError,))


def figure(record_property: Callable[[str, object], None], name: str, seconds: float) -> None:
    """Report one measured recovery time (printed, recorded, never asserted)."""
    print(f"FAULT FIGURE {name}: {seconds:.2f} s")
    record_property(name, round(seconds, 3))
    path = os.environ.get("PD_FAULT_FIGURES")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"name": name, "seconds": round(seconds, 3)}) + "\n")


# --------------------------------------------------------------------------- daemons


class FaultDaemon(Daemon):
    """A ``pd-dispatcher`` with engine ``engine1`` (``slots`` per agent, short heartbeats)."""

    def __init__(
        self,
        state_dir: Path,
        amqp_uri: str,
        database_url: str,
        *,
        sysname: str | None = None,
        slots: int = 4,
        dispatch_retry_seconds: float = 5,
        heartbeats: dict[str, float] | None = None,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(state_dir, amqp_uri, database_url)
        if sysname is not None:
            self.sysname = sysname
        config = {
            "server": {"amqp": {"uri": amqp_uri, "heartbeat": 10}},
            "dashi": {"sysname": self.sysname},
            "processdispatcher": {
                "database_url": database_url,
                "engines": {"engine1": {"slots": slots, **(heartbeats or HEARTBEATS)}},
                "default_engine": "engine1",
                "dispatch_retry_seconds": dispatch_retry_seconds,
                "restart_throttling_config": {"minimum_time_between_starts": 0},
            },
            "provisioner": {"driver": "static"},
        }
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def leads(self) -> bool:
        """True once this daemon's log says it acquired leadership in its latest start."""
        text = self.logs().rsplit(f"--- start {self.starts} ---", 1)[-1]
        return "leadership acquired" in text


# --------------------------------------------------------------------------- agents


class RecordingAgent(FakeEEAgent):
    """A fake agent that ignores repeated launches of a round it holds, like a real one.

    ``starts`` counts the processes it really started, per upid (any round). Like a
    real agent, it heartbeats every ``interval`` seconds and soon after a change, one
    heartbeat for a burst of launches (not one per launch).
    """

    def __init__(
        self, broker: BrokerConfig, name: str, node_id: str, *, interval: float = AGENT_HEARTBEAT
    ) -> None:
        super().__init__(broker, name, node_id)
        self.interval = interval
        self.starts: Counter[str] = Counter()
        self.repeats = 0
        self._changed = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RecordingAgent:
        super().start()
        self._halt.clear()
        self._thread = threading.Thread(target=self._beats, name=f"agent-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        super().stop()

    def _beats(self) -> None:
        while not self._halt.is_set():
            if self._changed.wait(self.interval):
                self._halt.wait(CHANGE_COALESCE)
            self._changed.clear()
            if self._halt.is_set():
                return
            with contextlib.suppress(DispatcherError):  # broker down: the next beat retries
                self.heartbeat()

    def launch_process(self, u_pid: str, round: int, run_type: str, parameters: Any) -> None:
        with self.lock:
            self.received.append(("launch_process", {"u_pid": u_pid, "round": round}))
            held = self.processes.get(u_pid)
            if held is not None and held["round"] == int(round):
                self.repeats += 1
            else:
                self.starts[u_pid] += 1
                self.processes[u_pid] = {"round": int(round), "state": self.launch_state}
        self._changed.set()


class Agents:
    """Recording agents on announced nodes of one dispatcher."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.broker = broker
        self.all: list[RecordingAgent] = []

    def add(self, client: ProcessDispatcherClient, node_id: str, count: int = 1) -> None:
        client.node_state(node_id, DOMAIN, "600-RUNNING", properties=None)
        for index in range(count):
            agent = RecordingAgent(self.broker, f"{node_id}_ee{index}", node_id)
            self.all.append(agent.start())
        for agent in self.all[-count:]:
            wait_for(
                lambda a=agent: a.name in client.dump()["resources"],
                what=f"{agent.name} registered",
            )

    def starts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for agent in self.all:
            with agent.lock:
                total.update(agent.starts)
        return total

    def repeats(self) -> int:
        return sum(agent.repeats for agent in self.all)

    def holders(self) -> dict[str, list[str]]:
        """upid → the agents that started it (any round)."""
        where: dict[str, list[str]] = {}
        for agent in self.all:
            with agent.lock:
                for upid in agent.starts:
                    where.setdefault(upid, []).append(agent.name)
        return where

    def stop(self) -> None:
        for agent in self.all:
            agent.stop()


def assert_started_once_each(agents: Agents, upids: set[str]) -> None:
    """Each of ``upids`` was started exactly once, on one agent; nothing else was started."""
    starts = agents.starts()
    twice = {upid: agents.holders()[upid] for upid, count in starts.items() if count > 1}
    assert twice == {}, f"started more than once: {twice}"
    assert set(starts) - upids == set(), "started processes nobody scheduled"
    assert upids - set(starts) == set(), "scheduled processes never started"


def running_count(client: ProcessDispatcherClient, upids: set[str]) -> int:
    return sum(
        1 for p in client.describe_processes() if p["upid"] in upids and p["state"] == "500-RUNNING"
    )


# --------------------------------------------------------------------------- load


class Load:
    """``threads`` clients scheduling ``upids``; each call is retried until acknowledged.

    A call that fails (no reply in time, broker down, a store error) is sent again with
    the same arguments: ``schedule_process`` is idempotent, so the retry is safe.
    """

    def __init__(
        self,
        make_client: Callable[[str], ProcessDispatcherClient],
        upids: list[str],
        *,
        threads: int = 8,
        definition: str = DEFINITION,
        restart_mode: str = "NEVER",
    ) -> None:
        self.make_client = make_client
        self.upids = upids
        self.definition = definition
        self.restart_mode = restart_mode
        self.acked: set[str] = set()
        self.failures: Counter[str] = Counter()
        self.ack_times: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(upids[i::threads], i), daemon=True)
            for i in range(threads)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, upids: list[str], index: int) -> None:
        client = self.make_client(f"load-{index}-{uuid.uuid4().hex[:6]}")
        try:
            for upid in upids:
                while not self._stop.is_set():
                    try:
                        client.schedule_process(
                            upid, self.definition, restart_mode=self.restart_mode
                        )
                    except DispatcherError as exc:
                        with self._lock:
                            self.failures[type(exc).__name__] += 1
                        time.sleep(0.2)
                        continue
                    with self._lock:
                        self.acked.add(upid)
                        self.ack_times.append(time.monotonic())
                    break
        finally:
            client.close()

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = sum(thread.is_alive() for thread in self._threads)
        self._stop.set()
        assert alive == 0, f"{alive} client threads still not acknowledged after {timeout}s"

    def stop(self) -> None:
        """Give up on the calls not acknowledged yet (cleanup after a failure)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def last_ack(self) -> float:
        with self._lock:
            return max(self.ack_times)

    def first_ack_after(self, moment: float) -> float | None:
        with self._lock:
            later = [t for t in self.ack_times if t > moment]
        return min(later) if later else None
