"""An agent asked to stop while it starts, and a supervisord that does not answer yet.

A local node is destroyed with SIGTERM to its agents, then whatever supervisord
they left is shut down; either may happen at any moment of an agent's start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from eeagent.errors import StartCancelledError
from eeagent.supervisor import SupervisorControl, stop_left_supervisord
from pdcommon import procfs
from tests.eeagent.conftest import wait_for

#: A "supervisord" that starts and never answers on its socket.
SILENT = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(600)\n"


def silent_supervisord(tmp_path: Path) -> tuple[Path, Path]:
    """An executable run as ``<it> -c <config>`` that records its pid and never answers."""
    marker = tmp_path / "silent.pid"
    program = tmp_path / "silent.py"
    program.write_text(SILENT)
    script = tmp_path / "silent-supervisord"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{program}" "{marker}" "$@"\n')
    script.chmod(0o755)
    return script, marker


def test_a_stop_while_supervisord_starts_kills_it_instead_of_waiting_for_it(
    tmp_path: Path,
) -> None:
    supdexe, marker = silent_supervisord(tmp_path)
    stopping = threading.Event()
    # Given an agent's supervisord that is starting (it has not answered yet), with a
    # start timeout far longer than any test
    control = SupervisorControl(
        tmp_path / "agent1", supdexe=supdexe, start_timeout=3600, stopping=stopping
    )
    raised: list[BaseException] = []

    def open_control() -> None:
        try:
            control.open()
        except BaseException as exc:
            raised.append(exc)

    opening = threading.Thread(target=open_control, daemon=True)
    opening.start()
    wait_for(lambda: marker.exists() and marker.read_text() != "", 30)
    pid = int(marker.read_text())
    # When the agent is asked to stop
    stopping.set()
    # Then the start is given up and the supervisord killed
    opening.join(60)
    assert not opening.is_alive(), "open() still waits for a supervisord being stopped"
    assert len(raised) == 1 and isinstance(raised[0], StartCancelledError)
    assert not procfs.pid_alive(pid)


def test_a_left_supervisord_that_does_not_answer_yet_is_sent_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "agent1"
    home.mkdir()
    config = SupervisorControl(home).files.config
    # Given a supervisord of this home that runs but does not answer (still starting)
    supervisord = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "-c", config],
        start_new_session=True,
    )
    try:
        (home / "supd.pid").write_text(f"{supervisord.pid}\n")
        wait_for(lambda: os.fsencode(config) in (procfs.read_cmdline(supervisord.pid) or b""), 30)
        # When the local driver shuts down what the agent left
        stop_left_supervisord(home)
        # Then it was told to stop (SIGTERM: a supervisord shuts its programs down),
        # not waited for and killed
        assert supervisord.wait(30) == -signal.SIGTERM
    finally:
        if supervisord.poll() is None:
            supervisord.kill()
            supervisord.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_between_the_handler_and_the_wakeup_descriptor_still_stops(
    sig: signal.Signals,
) -> None:
    from cli.common import stop_on_signals

    stop = threading.Event()
    real_set_wakeup_fd = signal.set_wakeup_fd

    def signal_first(fd: int, **kwargs: bool) -> int:
        # The signal lands after the handlers are installed, before the descriptor is set
        if fd != -1 and not stop.is_set():
            os.kill(os.getpid(), sig)
        return real_set_wakeup_fd(fd, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(signal, "set_wakeup_fd", signal_first)
        with stop_on_signals(stop):
            assert stop.wait(30), "the signal was lost"
