"""A real ``pd-dispatcher``: over-deep request values are refused, and an over-deep
value already in the database does not stop placement.

Given the daemon, a static node and a fake agent serving its engine: a
``schedule_process`` nested 500 levels deep is refused with ``BadRequestError``
and stores nothing; a process stored 500 levels deep behind the daemon's back (as
a database written before the limit may hold) is set aside (``850-FAILED``, its
reason in ``dump``) while every other process still reaches ``500-RUNNING``, and
``describe_process`` and ``terminate_process`` work on it.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from dashi.errors import BadRequestError
from dashi.jsontree import depth
from dispatcher.model import Process
from dispatcher.store.sql import SqlStore
from pdcommon.states import ProcessState
from tests.daemon.conftest import Daemon
from tests.support.fake_eeagent import FakeEEAgent
from tests.support.waiting import waiter

NODE = "node-deep"
AGENT = "eeagent-deep"
#: The engine of the daemon's embedded defaults.
DOMAIN = "pd_domain_default"
WAIT = 30.0


def nested(levels: int) -> dict[str, Any]:
    """A JSON object nested ``levels`` levels deep."""
    value: dict[str, Any] = {"leaf": True}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def database_url(daemon: Daemon) -> str:
    """The daemon's database: as configured, else its embedded SQLite file."""
    config = yaml.safe_load(daemon.config_path.read_text())
    url = config["processdispatcher"].get("database_url")
    return str(url) if url else f"sqlite:///{daemon.state_dir / 'dispatcher.db'}"


wait_for = waiter(WAIT)


def test_deep_values_are_refused_or_set_aside_and_placement_goes_on(daemon: Daemon) -> None:
    # Given a daemon with a node and an agent of its default engine
    daemon.start()
    agent = FakeEEAgent(daemon.broker(), AGENT, NODE, heartbeat_interval=0.5)
    with daemon.client() as pd:
        pd.create_definition("D", "supd", {"exec": "/bin/true", "argv": []})
        pd.node_state(NODE, DOMAIN, "600-RUNNING")
        agent.start()
        try:
            wait_for(lambda: AGENT in pd.dump()["resources"], what="the agent registered")

            def state(upid: str) -> str | None:
                record = pd.describe_process(upid)
                return None if record is None else str(record["state"])

            # When a schedule_process nests its configuration 500 levels deep
            with pytest.raises(BadRequestError, match="configuration: nested more than 100"):
                pd.schedule_process("deep", "D", configuration=nested(500))
            # Then nothing was stored, and a later process still runs
            assert pd.describe_process("deep") is None
            pd.schedule_process("p1", "D")
            wait_for(lambda: state("p1") == ProcessState.RUNNING, what="p1 running")

            # When a process 500 levels deep is in the database already, queued
            store = SqlStore(database_url(daemon))
            try:
                store.add_process_queued(
                    Process(
                        upid="old-deep",
                        definition={"definition_id": "D", "executable": {"exec": "/bin/true"}},
                        state=ProcessState.REQUESTED,
                        configuration=nested(500),
                    )
                )
            finally:
                store.close()
            pd.schedule_process("p2", "D")
            # Then it is set aside, failed, with its reason in dump
            wait_for(lambda: state("old-deep") == ProcessState.FAILED, what="old-deep failed")
            set_aside = pd.dump()["set_aside"]
            assert set_aside["old-deep"]["round"] == 0
            assert "configuration nested more than 100" in set_aside["old-deep"]["reason"]
            # And every other process reaches RUNNING
            wait_for(lambda: state("p2") == ProcessState.RUNNING, what="p2 running")
            pd.schedule_process("p3", "D")
            wait_for(lambda: state("p3") == ProcessState.RUNNING, what="p3 running")
            # And describe and terminate work on the deep record
            described = pd.describe_process("old-deep")
            assert described is not None
            assert depth(described["configuration"]) == 500
            assert pd.terminate_process("old-deep")["state"] == ProcessState.FAILED
        finally:
            agent.stop()
    assert "Traceback" not in daemon.logs()
