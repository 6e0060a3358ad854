"""The ``local`` provisioner end to end: nodes of real ``pd-eeagent`` processes on demand.

The dispatcher runs on the embedded transport and SQLite (the main job's
defaults, with a private sysname): no node exists until a process needs one; the
pool shrinks back to ``base_need`` once the work is gone; a restarted dispatcher
adopts the nodes still running instead of starting new ones.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.client import ProcessDispatcherClient
from dispatcher.service import DispatcherService
from eeagent.supervisor import stop_left_supervisord
from pdcommon.settings import Settings, load_settings
from tests.e2e.test_real_agents import wait_for

pytestmark = [pytest.mark.supervisord, pytest.mark.slow]

#: The scale-down grace of these pools: idle nodes go soon after the work.
SHORT_GRACE = 1.0


def pool_settings(
    tmp_path: Path, sysname: str, base_need: int, grace: float = SHORT_GRACE
) -> Settings:
    return load_settings(
        overrides={
            "state_dir": str(tmp_path / "state"),
            "dashi.sysname": sysname,
            "processdispatcher.engines": {
                "engine1": {
                    "slots": 2,
                    "base_need": base_need,
                    "heartbeat_period": 1,
                    "heartbeat_warning": 3,
                    "heartbeat_missing": 6,
                }
            },
            "provisioner.driver": "local",
            "provisioner.sites": {
                "default": {"driver": "local", "heartbeat": 1, "scale_down_grace": grace}
            },
        }
    )


class Pool:
    def __init__(self, tmp_path: Path, base_need: int = 0, grace: float = SHORT_GRACE) -> None:
        sysname = f"pool{uuid.uuid4().hex[:8]}"
        self.settings = pool_settings(tmp_path, sysname, base_need, grace)
        self.service: DispatcherService | None = None
        self.client: ProcessDispatcherClient | None = None

    def start(self) -> ProcessDispatcherClient:
        self.service = DispatcherService.build(
            self.settings, stop_supervisord=stop_left_supervisord
        )
        self.service.start()
        self.client = ProcessDispatcherClient.from_settings(self.settings, timeout=20)
        return self.client

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.service is not None:
            self.service.stop()
        self.client = self.service = None

    def vms(self) -> dict[str, Any]:
        assert self.client is not None
        return dict(self.client.dump().get("vms", {}))

    def running_vms(self) -> list[str]:
        return sorted(n for n, vm in self.vms().items() if vm["state"] == "running")

    def destroy_all(self) -> None:
        """Stop every agent this pool's driver started (the test leaves nothing behind)."""
        from dispatcher.provisioner.sites import build_sites

        for site in build_sites(self.settings).values():
            for node in site.driver.list_nodes():
                site.driver.destroy_node(node.node_id, node.provider_id)
            site.driver.close()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    made = Pool(tmp_path)
    try:
        yield made
    finally:
        made.stop()
        made.destroy_all()


def state(client: ProcessDispatcherClient, upid: str) -> str | None:
    record = client.describe_process(upid)
    return None if record is None else str(record["state"])


def test_nodes_come_with_work_go_with_it_and_survive_a_dispatcher_restart(pool: Pool) -> None:
    client = pool.start()
    # Given no nodes at all
    assert pool.vms() == {}
    client.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["600"]})
    # When three processes are scheduled (engine1: 2 slots per node)
    for upid in ("p1", "p2", "p3"):
        client.schedule_process(upid, "sleeper", restart_mode="NEVER")
    # Then two local nodes are started and every process runs on one of their agents
    for upid in ("p1", "p2", "p3"):
        wait_for(lambda u=upid: state(client, u) == "500-RUNNING", 90, f"{upid} running")
    nodes = pool.running_vms()
    assert len(nodes) == 2
    for vm in pool.vms().values():
        pids = vm["properties"].get("pids") or []
        assert pids and all(Path(f"/proc/{pid}").exists() for pid in pids), vm

    # When the dispatcher restarts
    pool.stop()
    client = pool.start()
    # Then it adopts the running nodes: the same ones, still running the processes
    wait_for(lambda: pool.running_vms() == nodes, 30, "nodes adopted")
    assert {state(client, u) for u in ("p1", "p2", "p3")} == {"500-RUNNING"}

    # When everything is terminated
    for upid in ("p1", "p2", "p3"):
        client.terminate_process(upid)
    for upid in ("p1", "p2", "p3"):
        wait_for(lambda u=upid: state(client, u) == "700-TERMINATED", 30, f"{upid} terminated")
    # Then the pool is retired down to base_need (0) and the agents are gone
    wait_for(lambda: pool.running_vms() == [], 60, "nodes retired")
    pids = [pid for vm in pool.vms().values() for pid in vm["properties"].get("pids") or []]

    def gone() -> bool:
        return not any(_alive(pid) for pid in pids)

    wait_for(gone, 30, "agents stopped")


def test_base_need_nodes_start_without_work(tmp_path: Path) -> None:
    made = Pool(tmp_path, base_need=1)
    try:
        made.start()
        wait_for(lambda: len(made.running_vms()) == 1, 60, "one node at base_need")
        client = made.client
        assert client is not None
        resources = client.dump()["resources"]
        assert len(resources) == 1
        assert next(iter(resources.values()))["state"] == "OK"
    finally:
        made.stop()
        made.destroy_all()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def test_bursts_of_short_processes_reuse_the_agents_within_the_scale_down_grace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # (the handler takes the level of the last call)
    caplog.set_level(logging.INFO, logger="dispatcher.provisioner.local")
    caplog.set_level(logging.DEBUG, logger="dispatcher.needs")
    # Given a pool whose idle nodes stay 120 s (engine1: 2 slots per node)
    made = Pool(tmp_path, grace=120)
    try:
        client = made.start()
        client.create_definition("true", "supd", {"exec": "/bin/true", "argv": []})
        wait_for(lambda: _NEEDS.search(caplog.text), 30, "the first need (0) registered")
        for wave in range(3):
            # When a burst of 4 short processes runs and ends, and the matchmaker
            # has seen the need fall to 0
            zeros = _zeros(caplog)
            upids = [f"w{wave}-{index}" for index in range(4)]
            for upid in upids:
                client.schedule_process(upid, "true", restart_mode="NEVER")
            for upid in upids:
                wait_for(lambda u=upid: state(client, u) == "800-EXITED", 90, f"{upid} exited")
            wait_for(lambda n=zeros: _zeros(caplog) > n, 30, "the need to fall to 0")
        # Then the later bursts ran on the agents the first one started
        needs = [int(m.group(1)) for m in _NEEDS.finditer(caplog.text)]
        started = len(_STARTED.findall(caplog.text))
        assert max(needs) == 2
        assert started <= max(needs) + 2, caplog.text
        assert len(made.running_vms()) == 2
        # and the dispatcher logged the pool's size when it grew
        assert "local pool of site default: 2 agent(s), 4 slot(s), RSS" in caplog.text
    finally:
        made.stop()
        made.destroy_all()


_NEEDS = re.compile(r"engine engine1 needs (\d+) node")
_FELL = re.compile(r"engine engine1:? needs? 0\b")
_STARTED = re.compile(r"node \S+: started agents")


def _zeros(caplog: pytest.LogCaptureFixture) -> int:
    """How many times the matchmaker saw the need fall to 0 (registered or held)."""
    return len(_FELL.findall(caplog.text))
