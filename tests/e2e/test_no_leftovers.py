"""No leftovers: once a local pool is empty, no ``supervisord`` or ``pd-eeagent`` runs.

Each way a pool can end is checked against the process table: the local driver's
destroy, a dispatcher shut down (SIGTERM) or killed (SIGKILL) and started again,
with ``eeagent.leave_running_on_shutdown`` false and true, and an interrupted
``bench/scaling.py``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import NodeRequest, new_node_id
from dispatcher.provisioner.local import LocalDriver
from eeagent.supervisor import stop_left_supervisord
from pdcommon.settings import LocalSiteSettings
from tests.daemon.conftest import Daemon
from tests.support.processes import pool_processes
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.supervisord, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scaling.py"


def supervisords(directory: Path) -> list[tuple[int, str]]:
    return [p for p in pool_processes(directory) if "supervisord.conf" in p[1]]


def agents(directory: Path) -> list[tuple[int, str]]:
    return [p for p in pool_processes(directory) if "supervisord.conf" not in p[1]]


@pytest.mark.parametrize("leave_running", [False, True])
def test_destroying_a_local_node_leaves_no_agent_and_no_supervisord(
    tmp_path: Path, leave_running: bool
) -> None:
    driver = LocalDriver(
        LocalSiteSettings(heartbeat=1, stop_timeout=15),
        template=AgentTemplate(amqp_uri="embedded://", leave_running_on_shutdown=leave_running),
        state_dir=tmp_path,
        owner="pd-test",
        stop_supervisord=stop_left_supervisord,
    )
    request = NodeRequest(new_node_id("engine1"), "engine1", slots=1, replicas=2, heartbeat=1)
    driver.create_node(request)
    # Given a node whose two agents run their supervisords
    wait_for(lambda: len(supervisords(tmp_path)) == 2, 30, "two supervisords")
    # When it is destroyed
    driver.destroy_node(request.node_id, request.node_id)
    # Then nothing of it runs
    assert pool_processes(tmp_path) == []


@pytest.mark.parametrize("leave_running", [False, True])
def test_a_pool_whose_directory_is_deleted_stops_by_itself(
    tmp_path: Path, leave_running: bool
) -> None:
    state_dir = tmp_path / "state"
    driver = LocalDriver(
        LocalSiteSettings(heartbeat=1),
        template=AgentTemplate(amqp_uri="embedded://", leave_running_on_shutdown=leave_running),
        state_dir=state_dir,
        owner="pd-test",
        stop_supervisord=stop_left_supervisord,
    )
    request = NodeRequest(new_node_id("engine1"), "engine1", slots=1, replicas=1, heartbeat=1)
    driver.create_node(request)
    log = state_dir / "nodes" / request.node_id / f"{request.agent_names[0]}.log"
    wait_for(lambda: "serving on" in log.read_text(), 30, "the agent serving")
    assert len(supervisords(state_dir)) == 1
    # Given the pool's owner is gone (killed) and its directory is deleted, so that
    # no dispatcher can ever adopt or destroy the node
    driver.close()
    shutil.rmtree(state_dir)
    # Then its agent and supervisord notice and stop
    wait_for(lambda: pool_processes(state_dir) == [], 60, "the orphans to stop")


def pool_daemon(tmp_path: Path, leave_running: bool) -> Daemon:
    daemon = Daemon(tmp_path, "embedded://", None)
    config = {
        "dashi": {"sysname": daemon.sysname},
        "processdispatcher": {
            "engines": {
                "engine1": {
                    "slots": 2,
                    "heartbeat_period": 1,
                    "heartbeat_warning": 3,
                    "heartbeat_missing": 6,
                }
            },
            "default_engine": "engine1",
        },
        "eeagent": {"leave_running_on_shutdown": leave_running},
        "provisioner": {
            "driver": "local",
            "sites": {"default": {"driver": "local", "heartbeat": 1, "scale_down_grace": 1}},
        },
    }
    daemon.config_path.write_text(yaml.safe_dump(config))
    return daemon


def state(daemon: Daemon, upid: str) -> str | None:
    with daemon.client("probe") as client:
        record = client.describe_process(upid)
    return None if record is None else str(record["state"])


def vm_states(daemon: Daemon) -> list[str]:
    with daemon.client("probe") as client:
        return [vm["state"] for vm in client.dump().get("vms", {}).values()]


@pytest.mark.parametrize(
    ("stop", "leave_running"),
    [
        (signal.SIGTERM, False),
        (signal.SIGTERM, True),
        (signal.SIGKILL, False),
        (signal.SIGKILL, True),
    ],
)
def test_a_pool_outliving_its_dispatcher_is_emptied_by_the_next_one_without_leftovers(
    tmp_path: Path, stop: signal.Signals, leave_running: bool
) -> None:
    daemon = pool_daemon(tmp_path, leave_running)
    upids = ["p1", "p2", "p3"]
    try:
        daemon.start()
        with daemon.client("setup") as client:
            client.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["600"]})
            for upid in upids:
                client.schedule_process(upid, "sleeper", restart_mode="NEVER")
        for upid in upids:
            wait_for(lambda u=upid: state(daemon, u) == "500-RUNNING", 90, f"{upid} running")
        running = agents(tmp_path)
        assert len(running) == 2
        # When the dispatcher is stopped (or killed) and started again
        daemon.signal(stop)
        daemon.wait(60)
        assert agents(tmp_path) == running
        daemon.start()
        # And the work ends, so the pool empties
        with daemon.client("work") as client:
            for upid in upids:
                client.terminate_process(upid)
        for upid in upids:
            wait_for(lambda u=upid: state(daemon, u) == "700-TERMINATED", 60, f"{upid} ended")
        wait_for(
            lambda: (s := vm_states(daemon)) and all(v == "terminated" for v in s), 90, "pool empty"
        )
        # Then no agent and no supervisord is left
        wait_for(lambda: pool_processes(tmp_path) == [], 30, "no leftovers")
    finally:
        daemon.kill()


def ignore_sigint() -> None:
    """What a shell does to a command it starts in the background (``cmd &``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_sigint() -> None:
    """What a terminal gives a command (whatever this test run inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("inherited_sigint", ["default", "ignored"])
def test_an_interrupted_scaling_bench_leaves_no_agent_and_no_supervisord(
    tmp_path: Path, inherited_sigint: str
) -> None:
    directory = tmp_path / "bench"
    bench = subprocess.Popen(
        [
            sys.executable,
            str(BENCH),
            "--driver",
            "local",
            "--nodes",
            "3",
            "--hold",
            "600",
            "--directory",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Started in the background by a shell, it inherits SIGINT ignored
        preexec_fn=ignore_sigint if inherited_sigint == "ignored" else default_sigint,
    )
    try:
        # Given the bench's local pool is up
        wait_for(lambda: len(supervisords(directory)) == 3, 90, "three agents up")
        # When the bench is interrupted (Ctrl-C)
        bench.send_signal(signal.SIGINT)
        output, _ = bench.communicate(timeout=90)
        # Then it stopped every node before exiting
        assert pool_processes(directory) == [], output.decode(errors="replace")
        assert b"interrupted" in output
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
