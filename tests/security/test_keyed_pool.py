"""A dispatcher with ``security.hmac_key`` and its local agents, end to end: the key
reaches the agents it starts, its commands are signed and carried out, the agents'
heartbeats are signed and taken, and an unsigned heartbeat is not."""

from __future__ import annotations

import logging
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dashi.client import RpcClient
from dashi.security import derive_key
from dispatcher.client import ProcessDispatcherClient
from pdcommon.settings import load_settings
from pdcommon.wire import broker_config
from tests.e2e.test_local_pool import Pool, state
from tests.e2e.test_real_agents import wait_for

pytestmark = [pytest.mark.supervisord, pytest.mark.slow]

KEY = "pool-shared-secret-0123456789abcdef"


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    made = Pool(tmp_path)
    made.settings = load_settings(
        overrides={
            "state_dir": str(tmp_path / "state"),
            "dashi.sysname": f"key{uuid.uuid4().hex[:8]}",
            "processdispatcher.engines": {
                "engine1": {
                    "slots": 2,
                    "heartbeat_period": 1,
                    "heartbeat_warning": 3,
                    "heartbeat_missing": 6,
                }
            },
            "provisioner.driver": "local",
            "provisioner.sites": {"default": {"driver": "local", "heartbeat": 1}},
            "security.hmac_key": KEY,
            "security.signature_max_age": 120,
        }
    )
    try:
        yield made
    finally:
        made.stop()
        made.destroy_all()


def test_a_keyed_dispatcher_runs_work_on_the_agents_it_starts(
    pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    client: ProcessDispatcherClient = pool.start()
    client.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["600"]})
    # When a process is scheduled (a node with a local agent is started for it)
    with caplog.at_level(logging.WARNING):
        client.schedule_process("p1", "sleeper", restart_mode="NEVER")
        # Then the signed launch is carried out and the signed heartbeats are taken
        wait_for(lambda: state(client, "p1") == "500-RUNNING", 90, "p1 running")
        client.terminate_process("p1")
        wait_for(lambda: state(client, "p1") == "700-TERMINATED", 30, "p1 terminated")
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    # And each agent got its own key (never the master) in its private configuration file
    configs = list((pool.settings.state_dir / "nodes").glob("*/*.yml"))
    assert configs
    broker = broker_config(pool.settings)
    for path in configs:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert KEY not in path.read_text()
        security = yaml.safe_load(path.read_text())["security"]
        own = derive_key(KEY, broker.prefixed(path.stem)).hex()
        assert security == {"agent_key": own, "signature_max_age": 120}


def test_a_keyed_dispatcher_refuses_unsigned_heartbeats(
    pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    client = pool.start()
    broker = broker_config(pool.settings)
    beat = {"eeagent_id": "forged", "node_id": "forged-node", "processes": []}
    # When someone without the key reports as an agent
    with caplog.at_level(logging.WARNING), RpcClient(broker, "forged") as forger:
        forger.fire("process_dispatcher", "heartbeat", message=beat)
        forger.fire("process_dispatcher", "heartbeat", message={**beat, "timestamp": "x"})
        wait_for(
            lambda: len([r for r in caplog.records if "refused heartbeat" in r.getMessage()]) == 2,
            10,
            "both heartbeats refused",
        )
    # Then the dispatcher knows no such agent or node
    dump = client.dump()
    assert "forged" not in dump["resources"] and "forged-node" not in dump["nodes"]
