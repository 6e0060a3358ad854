"""The embedded state directory is private whatever the umask, and refused when others can write it.

The real daemon runs with no configuration (``PD_STATE_DIR`` only): SQLite, the
embedded broker and the ``local`` provisioner starting real ``pd-eeagent``
processes under supervisord.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.provisioner.sites import build_sites
from pdcommon.settings import load_settings

BIN = Path(sys.executable).parent
PD_DISPATCHER, PD_CLI = str(BIN / "pd-dispatcher"), str(BIN / "pd-cli")


def environment(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
    env["PD_STATE_DIR"] = str(state_dir)
    return env


def cli(
    state_dir: Path, umask: int, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PD_CLI, "--timeout", "20", *args],
        env=environment(state_dir),
        umask=umask,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def not_private(state_dir: Path) -> list[str]:
    """Entries under ``state_dir`` (itself included) that group or others may use."""
    loose = []
    for path in [state_dir, *state_dir.rglob("*")]:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # a message consumed meanwhile
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            continue
        expected_ok = mode == 0o700 if stat.S_ISDIR(info.st_mode) else mode & 0o077 == 0
        if not expected_ok:
            loose.append(f"{mode:04o} {path.relative_to(state_dir.parent)}")
    return loose


def stop_local_agents(state_dir: Path) -> None:
    settings = load_settings(environ={"PD_STATE_DIR": str(state_dir)})
    for site in build_sites(settings).values():
        for node in site.driver.list_nodes():
            site.driver.destroy_node(node.node_id, node.provider_id)
        site.driver.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "s"  # short: supervisord's socket path must fit
    yield path
    if path.exists():
        stop_local_agents(path)


@pytest.mark.supervisord
@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_everything_under_the_state_dir_is_private_with_the_daemon_and_local_agents(
    state_dir: Path, tmp_path: Path, umask: int
) -> None:
    # Given the daemon with no configuration, started under a permissive umask
    with open(tmp_path / "dispatcher.log", "wb") as log:
        daemon = subprocess.Popen(
            [PD_DISPATCHER], env=environment(state_dir), umask=umask, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while cli(state_dir, umask, "definition", "list", check=False).returncode != 0:
            assert daemon.poll() is None, (tmp_path / "dispatcher.log").read_text()
            assert time.monotonic() < deadline, "the daemon did not answer"
            time.sleep(0.2)
        # When a definition with a secret in its environment runs a process on a local agent
        cli(
            state_dir,
            umask,
            "definition",
            "create",
            "secret",
            "--exec",
            "/bin/sh",
            "--arg",
            "-c",
            "--arg",
            'echo "token is $TOKEN"; exec sleep 600',
            "--env",
            "TOKEN=s3cr3t",
        )
        cli(state_dir, umask, "process", "schedule", "p1", "--definition", "secret")
        cli(state_dir, umask, "process", "wait", "p1", "--state", "500-RUNNING", "--timeout", "90")
        deadline = time.monotonic() + 30
        while "token is" not in cli(state_dir, umask, "process", "logs", "p1").stdout:
            assert time.monotonic() < deadline, "no output from the process"
            time.sleep(0.2)
        # Then the database, its WAL, the broker, the nodes, the agents' configuration,
        # supervisord's socket and logs and the process output are all private
        assert (state_dir / "dispatcher.db-wal").exists() and (state_dir / "nodes").is_dir()
        assert not_private(state_dir) == []
    finally:
        daemon.terminate()
        daemon.wait(30)


@pytest.mark.parametrize("mode", [0o775, 0o757], ids=["group-writable", "other-writable"])
def test_a_state_dir_others_can_write_is_refused_with_one_line_and_status_2(
    tmp_path: Path, mode: int
) -> None:
    # Given a state directory its group or others can write (made under umask 002)
    state_dir = tmp_path / "shared"
    state_dir.mkdir()
    state_dir.chmod(mode)
    for command in ([PD_DISPATCHER], [PD_CLI, "--timeout", "1", "definition", "list"]):
        # When the daemon or pd-cli starts on it
        done = subprocess.run(
            command, env=environment(state_dir), capture_output=True, text=True, timeout=60
        )
        # Then it refuses with one line that says how to fix it, and status 2
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert f"chmod 700 {state_dir}" in done.stderr
        # And it created nothing there
        assert list(state_dir.iterdir()) == []


def test_a_state_dir_an_earlier_version_left_readable_is_made_private(tmp_path: Path) -> None:
    # Given a state directory readable by others, with a readable database file
    state_dir = tmp_path / "old"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    (state_dir / "dispatcher.db").write_bytes(b"")
    (state_dir / "dispatcher.db").chmod(0o644)
    # When pd-cli (embedded) starts on it
    subprocess.run(
        [PD_CLI, "--timeout", "1", "definition", "list"],
        env=environment(state_dir),
        capture_output=True,
        timeout=60,
    )
    # Then the directory and everything in it are private
    assert not_private(state_dir) == []
