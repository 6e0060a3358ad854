"""The README's main-job command, run as a reader would: ``bash scripts/run.sh``.

The command runs in a fresh clone of the repository with its own state
directory: it must start the dispatcher on the embedded defaults, start a local
agent, run the example process to ``500-RUNNING`` and show its output; Ctrl-C
stops the dispatcher with status 0. The clone shares this test run's virtual
environment (``.venv`` is a link to it) so that the test does not download the
dependencies again; the README's test command, which CI runs, builds that
environment from nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.signals import sigint_as_in_a_terminal

pytestmark = [pytest.mark.supervisord, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _stop_leftovers(marker: str) -> None:
    """Stop the local agents (and their supervisord) the job left running."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        subprocess.run(["pkill", f"-{sig.name[3:]}", "-f", marker], check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0:
                return
            time.sleep(0.2)


def test_the_main_job_runs_the_example_process(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    # the README's script must be the one under test, even before it is committed
    (clone / "scripts" / "run.sh").write_bytes((REPO / "scripts" / "run.sh").read_bytes())
    (clone / ".venv").symlink_to(Path(sys.prefix))
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
    env["PD_STATE_DIR"] = str(state)
    with sigint_as_in_a_terminal():
        job = subprocess.Popen(
            ["bash", "scripts/run.sh"],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lines: list[str] = []
    seen = threading.Event()
    ready = threading.Event()

    def read() -> None:
        assert job.stdout is not None
        for raw in job.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            if "example-1 alive at" in line:
                seen.set()
            if "Ctrl-C stops it" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(180), "".join(lines[-40:])
        described = subprocess.run(
            [
                str(Path(sys.prefix) / "bin" / "pd-cli"),
                "--json",
                "process",
                "describe",
                "example-1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert described.returncode == 0, described.stderr
        record = json.loads(described.stdout)
        assert record["state"] == "500-RUNNING"
        assert record["assigned"]
        # Ctrl-C in the terminal, once the job says so: the whole group gets SIGINT
        assert ready.wait(60), "".join(lines[-40:])
        os.killpg(job.pid, signal.SIGINT)
        assert job.wait(60) == 0, "".join(lines[-40:])
        output = "".join(lines)
        assert "Traceback" not in output
        assert "dispatcher process_dispatcher stopped" in output
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(10)
        _stop_leftovers(str(state))
