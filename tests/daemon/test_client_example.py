"""The client library's documented example runs against a real ``pd-dispatcher``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pdcommon.states import ProcessState
from tests.daemon.conftest import Daemon

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "client_quickstart.py"


def test_the_client_quickstart_example_runs_against_a_real_dispatcher(daemon: Daemon) -> None:
    # Given a running daemon
    daemon.start()
    # When the example runs with the daemon's configuration file
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--config", str(daemon.config_path)],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then it succeeds and every step printed what the RPCs returned
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "definitions: ['quickstart-sleeper']"
    assert lines[1].startswith("scheduled: quickstart-1 ")
    assert lines[1].endswith(" round 0")
    assert lines[2] == "scheduled again: quickstart-1 round 0"
    assert lines[3] == "refused: dashi.exceptions.BadRequestError"
    assert lines[4].startswith("described: quickstart-1 ")
    assert lines[4].endswith("[['my_service', 'process_changed']]")
    assert lines[5] == f"terminated: quickstart-1 {ProcessState.TERMINATED}"
    assert lines[6] == "not found: dashi.exceptions.NotFoundError"
    assert lines[7] == "definitions: []"
    # And the dispatcher holds what the example left behind
    with daemon.client() as pd:
        record = pd.describe_process("quickstart-1")
        assert record is not None
        assert record["state"] == ProcessState.TERMINATED
