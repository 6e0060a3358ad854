"""``pd-dispatcher`` as a real process: clean stops, and state kept across restarts.

Each test runs on the embedded defaults (broker-less transport, SQLite) and on
RabbitMQ with PostgreSQL.
"""

from __future__ import annotations

import signal
import threading

import pytest

from dashi.errors import NotFoundError
from pdcommon.errors import DispatcherError
from pdcommon.states import ProcessState
from tests.daemon.conftest import Daemon

#: States a scheduled process may be in with no agents and a static provisioner.
UNPLACED = {ProcessState.REQUESTED, ProcessState.WAITING}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_daemon_stops_cleanly_on_sigterm_and_sigint(daemon: Daemon, sig: signal.Signals):
    # Given a running daemon that has served a call
    daemon.start()
    with daemon.client() as pd:
        assert pd.list_definitions() == []
    # When it receives the signal
    daemon.signal(sig)
    # Then it exits with status 0, saying it stopped, without a traceback
    assert daemon.wait(30) == 0
    logs = daemon.logs()
    assert "stopped" in logs
    assert "Traceback" not in logs


def test_a_burst_of_signals_still_stops_the_daemon(daemon: Daemon):
    # Given a running daemon waiting for its stop signal
    daemon.start()
    # When signals arrive in a burst (a supervisor and a terminal both stopping it)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM) * 5:
        daemon.signal(sig)
    # Then it still exits cleanly: the handler never blocks the thread it interrupts
    assert daemon.wait(30) == 0
    assert "Traceback" not in daemon.logs()


def test_definitions_and_processes_survive_a_sigterm_restart(daemon: Daemon):
    # Given a daemon holding a definition, scheduled processes and a terminated one
    daemon.start()
    with daemon.client() as pd:
        pd.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["60"]})
        for i in range(5):
            pd.schedule_process(f"p{i}", "sleeper", subscribers=[["sub", "op"]], name=f"n{i}")
        assert pd.terminate_process("p4")["state"] == ProcessState.TERMINATED
        pd.set_system_boot(True)
        before = {p["upid"]: p for p in pd.describe_processes()}
    # When it is stopped with SIGTERM and started again
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    daemon.start()
    # Then everything is still there, unchanged
    with daemon.client() as pd:
        assert pd.list_definitions() == ["sleeper"]
        assert pd.describe_definition("sleeper")["executable"] == {
            "exec": "/bin/sleep",
            "argv": ["60"],
        }
        after = {p["upid"]: p for p in pd.describe_processes()}
        assert after.keys() == before.keys() == {f"p{i}" for i in range(5)}
        for upid, record in before.items():
            assert after[upid]["state"] == record["state"]
            assert after[upid]["round"] == record["round"]
            assert after[upid]["name"] == record["name"]
            assert after[upid]["subscribers"] == [["sub", "op"]]
        assert after["p4"]["state"] == ProcessState.TERMINATED
        # And a repeated schedule is still idempotent against the stored record
        repeat = pd.schedule_process("p0", "sleeper", subscribers=[["sub", "op"]], name="n0")
        assert repeat["round"] == 0
        with pytest.raises(NotFoundError):
            pd.terminate_process("never-scheduled")


def test_nothing_acknowledged_is_lost_when_the_daemon_is_killed(daemon: Daemon):
    # Given a daemon and a client scheduling processes one after another
    daemon.start()
    acknowledged: list[str] = []
    stop = threading.Event()
    enough = threading.Event()
    failures: list[BaseException] = []

    def schedule_until_killed() -> None:
        with daemon.client("loader", timeout=2.0) as pd:
            i = 0
            while not stop.is_set():
                upid = f"k{i}"
                try:
                    result = pd.schedule_process(upid, "sleeper", restart_mode="NEVER")
                except DispatcherError as exc:  # the daemon died mid-call: not acknowledged
                    failures.append(exc)
                    return
                assert result["state"] in UNPLACED
                acknowledged.append(upid)
                if len(acknowledged) >= 30:
                    enough.set()
                i += 1

    with daemon.client() as pd:
        pd.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["60"]})
    loader = threading.Thread(target=schedule_until_killed)
    loader.start()
    try:
        assert enough.wait(60), "the daemon acknowledged fewer than 30 schedules"
        # When it is killed with SIGKILL while calls are in flight
        daemon.kill()
    finally:
        stop.set()
        loader.join(30)
    assert not loader.is_alive()
    assert len(acknowledged) >= 30
    # Then, after a restart, every acknowledged schedule is stored
    daemon.start()
    with daemon.client() as pd:
        stored = {p["upid"]: p for p in pd.describe_processes()}
        for upid in acknowledged:
            assert upid in stored, f"{upid} was acknowledged but is lost"
            assert stored[upid]["state"] in UNPLACED
            assert stored[upid]["round"] == 0
        # And the daemon keeps serving: a new schedule and a repeat of an old one work
        assert pd.schedule_process("after-restart", "sleeper")["state"] in UNPLACED
        assert pd.schedule_process(acknowledged[0], "sleeper", restart_mode="NEVER")["round"] == 0
