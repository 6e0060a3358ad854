"""Fixtures for the agent tests.

* ``control`` / ``agent``: an :class:`EEAgent` over the in-memory backend with a
  hand-moved clock (fast unit tests);
* ``supd`` / ``supd_agent``: the real supervisord adapter in a private directory,
  shut down (with every child) after the test;
* ``PdSink``: a stand-in dispatcher service that records the heartbeats it gets;
* ``agent_process``: a real ``pd-eeagent`` subprocess, killed after the test.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashi.broker import BrokerConfig
from dashi.service import RpcService
from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.persistence import StateStore
from eeagent.supervisor import SupervisorControl
from tests.support.clock import FakeClock
from tests.support.waiting import waiter

NOW = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[2]


class Changes:
    """Counts the agent's change notifications."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


wait_for = waiter(interval=0.02)


def wait_state(agent: EEAgent, upid: str, round: int, state: str, timeout: float = 10.0) -> Any:
    """Poll ``agent`` until ``(upid, round)`` is in ``state``; return its record."""

    def reached() -> Any:
        agent.poll()
        record = agent.record(upid, round)
        return record if record is not None and record.state == state else None

    try:
        return wait_for(reached, timeout)
    except AssertionError:
        raise AssertionError(
            f"{upid} round {round} never reached {state}: {agent.record(upid, round)}"
        ) from None


def sleeper(seconds: int = 600) -> dict[str, Any]:
    """Launch parameters of a process that sleeps."""
    return {"exec": "sleep", "argv": [str(seconds)]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def control() -> FakeProcessControl:
    return FakeProcessControl()


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def agent(
    control: FakeProcessControl, clock: FakeClock, changes: Changes, tmp_path: Path
) -> EEAgent:
    """An opened agent with 3 slots over the in-memory backend."""
    new = EEAgent(
        name="agent1",
        node_id="node1",
        slots=3,
        control=control,
        store=StateStore(tmp_path / "state.json"),
        default_directory=str(tmp_path),
        on_change=changes,
        clock=clock,
    )
    new.open()
    return new


def _children(pid: int) -> list[int]:
    found = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in path.read_text().split()]
    return found


def _ours(pid: int, control: SupervisorControl) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return os.fsencode(control.files.config) in handle.read()
    except OSError:
        return False


def stop_supervisord(control: SupervisorControl) -> None:
    """Shut a test supervisord down, and make sure nothing of it survives."""
    try:
        pid = int(Path(control.files.pidfile).read_text().strip())
    except (OSError, ValueError):
        pid = 0
    children = _children(pid) if pid and _ours(pid, control) else []
    with contextlib.suppress(Exception):
        control.close(stop_programs=True)
    if pid and _ours(pid, control):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(OSError):
            os.killpg(child, signal.SIGKILL)


@pytest.fixture
def supd(tmp_path: Path, supervisord_bin: str) -> Iterator[SupervisorControl]:
    """The real supervisord adapter in ``<tmp>/agent1`` (not opened yet)."""
    control = SupervisorControl(tmp_path / "agent1")
    yield control
    stop_supervisord(control)


@pytest.fixture
def supd_agent(supd: SupervisorControl, tmp_path: Path, changes: Changes) -> EEAgent:
    """An opened agent (3 slots) over a real supervisord."""
    new = EEAgent(
        name="agent1",
        node_id="node1",
        slots=3,
        control=supd,
        store=StateStore(supd.home / "state.json"),
        default_directory=str(tmp_path),
        on_change=changes,
    )
    new.open()
    return new


class PdSink:
    """A dispatcher stand-in: serves ``heartbeat`` and queues what it receives."""

    def __init__(self, broker: BrokerConfig, name: str = "process_dispatcher") -> None:
        self.beats: queue.Queue[tuple[dict[str, Any], str | None]] = queue.Queue()
        self.service = RpcService(broker, name)
        self.service.handle("heartbeat", self._heartbeat, sender_kwarg="sender", validate=False)

    def _heartbeat(self, message: dict[str, Any], sender: str | None = None) -> None:
        self.beats.put((message, sender))

    def next(self, timeout: float = 10.0) -> tuple[dict[str, Any], str | None]:
        return self.beats.get(timeout=timeout)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first heartbeat (from now) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching heartbeat arrived")
            try:
                message, _ = self.beats.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError("no matching heartbeat arrived") from None
            if predicate(message):
                return message


def process_state(message: dict[str, Any], upid: str) -> list[Any] | None:
    """The ``state`` a heartbeat reports for ``upid`` (``None`` if absent)."""
    for entry in message["processes"]:
        if entry["upid"] == upid:
            return list(entry["state"])
    return None


def agent_command() -> list[str]:
    """The installed ``pd-eeagent`` script, else ``python -m cli.eeagent``."""
    script = Path(sys.executable).with_name("pd-eeagent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.eeagent"]


class AgentProcess:
    """A ``pd-eeagent`` subprocess with its own configuration file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as output:
            self.proc = subprocess.Popen(
                [*agent_command(), "--config", str(self.config)],
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("PD_")},
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def agent_process(tmp_path: Path, supervisord_bin: str) -> Iterator[Callable[..., AgentProcess]]:
    """Factory: ``agent_process(settings_dict)`` writes the config; call ``.start()``."""
    made: list[AgentProcess] = []

    def make(settings: dict[str, Any]) -> AgentProcess:
        config = tmp_path / f"agent{len(made)}.yml"
        config.write_text(yaml.safe_dump(settings))
        process = AgentProcess(config, tmp_path / f"agent{len(made)}.log")
        made.append(process)
        return process

    yield make
    for process in made:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)
    # Whatever supervisord the agents left (kill -9 tests leave one on purpose).
    for home in tmp_path.glob("supd/*"):
        stop_supervisord(SupervisorControl(home))
