"""Fuzz every eeagent RPC's arguments through the agent's RPC wiring.

Given an :class:`~eeagent.service.AgentService` over the in-memory process
backend, holding a running, an exited and a terminated process, when any of its
operations is called with near-valid or arbitrary arguments (from the configured
dispatcher, or from anyone else), then the reply is a success or a known dashi
error, and a rejected request changes neither the agent's records, nor its
backend's programs, nor its state file, and asks for no heartbeat.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashi.broker import BrokerConfig
from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.persistence import StateStore
from eeagent.service import AgentService
from tests.eeagent.conftest import Changes, FakeClock, sleeper
from tests.faults.fuzzing import (
    arguments,
    check_reply,
    field_values,
    fuzz_settings,
    with_attacks,
)

EXAMPLES_PER_OPERATION = 350
PD_NAME = "process_dispatcher"

UPIDS = ["p-running", "p-exited", "p-terminated", "p-new", "p\x01"]
ROUNDS = [0, 1, 2, "0", "1", 1.0, 2**40]
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "launch_process": {
        "u_pid": field_values(UPIDS),
        "round": field_values(ROUNDS),
        "run_type": field_values(["supd", "pyon"]),
        "parameters": field_values(
            [
                sleeper(),
                {"exec": "/bin/true", "argv": [1, "x"], "env": {"A": 1}},
                {"exec": "sleep", "working_directory": "relative"},
                {"exec": ""},
                None,
                {},
            ]
        ),
    },
    "terminate_process": {"u_pid": field_values(UPIDS), "round": field_values(ROUNDS)},
    "restart_process": {"u_pid": field_values(UPIDS), "round": field_values(ROUNDS)},
    "cleanup": {"u_pid": field_values(UPIDS), "round": field_values(ROUNDS)},
    "dump_state": {"rpc": field_values([True, False])},
    "get_process_logs": {
        "u_pid": field_values(UPIDS),
        "round": field_values(ROUNDS),
        "stream": field_values(["stdout", "stderr"]),
        "tail_bytes": field_values([1, 65536, 0, 4 * 1024 * 1024]),
    },
}
senders = st.one_of(
    st.just(PD_NAME),
    st.just(PD_NAME),
    st.just(PD_NAME),
    with_attacks(field_values([None, "sys.pd", "x"])),
)

CASES: dict[str, int] = {}


class _Agent:
    """One agent service (never started: requests go straight to ``dispatch``)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.control = FakeProcessControl()
        self.clock = FakeClock()
        self.agent = EEAgent(
            name="agent1",
            node_id="node1",
            slots=3,
            control=self.control,
            store=StateStore(home / "state.json"),
            default_directory=str(home),
            clock=self.clock,
        )
        self.service = AgentService(
            self.agent, broker=BrokerConfig(), pd_name=PD_NAME, heartbeat=3600
        )
        self.changes = Changes()
        self.agent.on_change = self.changes
        self.agent.open()
        self.agent.launch_process("p-running", 0, "supd", sleeper())
        self.agent.launch_process("p-exited", 1, "supd", sleeper())
        self.agent.launch_process("p-terminated", 2, "supd", sleeper())
        self.agent.poll()
        self.control.write_log("p-running-0", "stdout", b"hello\n")
        self.control.exit("p-exited-1", 3)
        self.agent.terminate_process("p-terminated", 2)
        self.agent.poll()
        self.agent.poll()

    def snapshot(self) -> Any:
        state_file = self.home / "state.json"
        return (
            [record.model_dump() for record in self.agent.records()],
            {name: (p.state, p.pid, p.started) for name, p in self.control.programs.items()},
            state_file.read_bytes() if state_file.exists() else None,
            self.changes.count,
        )

    def close(self) -> None:
        self.service.client.close()


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Pool]:
    pool = _Pool(tmp_path_factory.mktemp("fuzz-eeagent"))
    yield pool
    pool.close()


class _Pool:
    """Seeded agents, one rebuilt only after a request succeeded (see the dispatcher fuzz)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._numbers = itertools.count()
        self._clean: _Agent | None = None
        self._all: list[_Agent] = []

    def take(self) -> _Agent:
        if self._clean is None:
            home = self.base / f"agent{next(self._numbers)}"
            home.mkdir()
            self._clean = _Agent(home)
            self._all.append(self._clean)
        agent, self._clean = self._clean, None
        return agent

    def give_back(self, agent: _Agent) -> None:
        self._clean = agent

    def close(self) -> None:
        for agent in self._all:
            agent.close()


@pytest.mark.parametrize("op", sorted(FIELDS))
@fuzz_settings(EXAMPLES_PER_OPERATION)
@given(data=st.data())
def test_any_arguments_get_a_known_answer_and_a_rejection_changes_nothing(
    agents: _Pool, op: str, data: st.DataObject
) -> None:
    # Given a seeded agent
    agent = agents.take()
    before = agent.snapshot()
    # When the operation is called with fuzzed arguments, from the dispatcher or not
    args = data.draw(arguments(FIELDS[op]), label="args")
    sender = data.draw(senders, label="sender")
    headers = {} if sender is None else {"sender": sender}
    reply = agent.service.rpc.dispatch({"op": op, "args": args}, headers)
    # Then the answer is known, and a rejection changed nothing
    if check_reply(reply):
        assert agent.snapshot() == before, f"{op} was rejected but changed the agent"
        agents.give_back(agent)
    CASES[op] = CASES.get(op, 0) + 1


def test_the_fuzz_ran_its_cases() -> None:
    """Runs last in this module: the cases above really ran."""
    if not CASES:
        pytest.skip("run with the fuzz tests above")
    print(f"eeagent fuzz: {sum(CASES.values())} cases {dict(sorted(CASES.items()))}")
    assert set(CASES) == set(FIELDS)
