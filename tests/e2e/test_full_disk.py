"""The embedded default on a full disk: output is dropped, processes and control survive.

The dispatcher (embedded transport, SQLite, the ``local`` provisioner) keeps its
state directory on a 20 MB tmpfs; one process writes output as fast as it can.
Its output stops short of the reserve the control path needs, so its supervisord
and the other process survive and a ``terminate`` still goes through and frees
the space. When the disk is completely full (something else filled it), a call
fails at once with :class:`DiskFullError` naming the broker's folder and leaves
no temporary file behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashi.errors import DiskFullError
from eeagent.supdrun import RESERVE_MIN
from tests.e2e.test_local_pool import Pool, state
from tests.e2e.test_real_agents import wait_for
from tests.support.tmpfs import fill, free_bytes, small_tmpfs, temporaries

pytestmark = [pytest.mark.supervisord, pytest.mark.slow]


def find_process(argv: list[str]) -> int | None:
    """The pid of the process running exactly ``argv``, if any."""
    wanted = b"\0".join(arg.encode() for arg in argv) + b"\0"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read() == wanted:
                        return int(entry)
            except OSError:
                continue
    return None


def written(pid: int) -> int:
    """Bytes process ``pid`` has written so far (``wchar`` of ``/proc/<pid>/io``)."""
    with open(f"/proc/{pid}/io", encoding="ascii") as handle:
        fields = dict(line.split(": ") for line in handle.read().splitlines())
    return int(fields["wchar"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pool_on_small_disk(tmp_path: Path) -> Iterator[tuple[Pool, Path]]:
    with small_tmpfs(tmp_path / "disk", 20) as disk:
        made = Pool(disk)
        try:
            yield made, disk
        finally:
            with_filler = disk / "filler"
            if with_filler.exists():
                with_filler.unlink()
            made.stop()
            made.destroy_all()


def test_a_disk_full_of_output_keeps_processes_and_control_and_names_itself(
    pool_on_small_disk: tuple[Pool, Path],
) -> None:
    pool, disk = pool_on_small_disk
    client = pool.start()
    token = uuid.uuid4().hex
    quiet_argv, spew_argv = ["/bin/sleep", "987654"], ["/usr/bin/yes", f"output {token}"]
    client.create_definition("quiet", "supd", {"exec": quiet_argv[0], "argv": quiet_argv[1:]})
    client.create_definition("spew", "supd", {"exec": spew_argv[0], "argv": spew_argv[1:]})
    # Given a quiet process and one writing output as fast as it can, on one agent
    client.schedule_process("quiet", "quiet", restart_mode="NEVER")
    client.schedule_process("spew", "spew", restart_mode="NEVER")
    for upid in ("quiet", "spew"):
        wait_for(lambda u=upid: state(client, u) == "500-RUNNING", 60, f"{upid} running")
    quiet, spew = find_process(quiet_argv), find_process(spew_argv)
    assert quiet and spew
    (pidfile,) = (disk / "state").glob("nodes/*/*/supd.pid")
    supervisord = int(pidfile.read_text())

    # When the output has filled the disk as far as it can go
    wait_for(lambda: free_bytes(disk) < 2 * RESERVE_MIN, 30, "the disk filling up")
    before = written(spew)
    wait_for(lambda: not alive(spew) or written(spew) > before + 4 * RESERVE_MIN, 30, "output")
    # Then it stops short of the reserve, and supervisord and both processes live on
    assert free_bytes(disk) >= RESERVE_MIN / 2
    assert alive(supervisord) and alive(quiet) and alive(spew)
    assert state(client, "quiet") == "500-RUNNING"

    # When the writer is terminated on that disk
    client.terminate_process("spew")
    # Then it stops and its output is deleted; the rest runs on
    wait_for(lambda: state(client, "spew") == "700-TERMINATED", 30, "spew terminated")
    wait_for(lambda: free_bytes(disk) > 12 * 1024 * 1024, 30, "the output deleted")
    assert alive(supervisord) and alive(quiet)

    # When the disk is filled completely by something else
    fill(disk / "filler")
    # Then a call fails at once naming the full disk and the broker's folder
    with pytest.raises(DiskFullError) as failed:
        client.describe_process("quiet")
    assert "No space left on device" in str(failed.value)
    assert str(disk / "state" / "broker") in str(failed.value)
    # and no temporary message file is left behind
    broker = disk / "state" / "broker"
    wait_for(lambda: not temporaries(broker), 10, f"no temporary file left in {broker}")
    assert alive(supervisord) and alive(quiet)

    # When that space is freed again
    (disk / "filler").unlink()
    # Then everything answers again, and the quiet process never stopped
    assert state(client, "quiet") == "500-RUNNING"
    assert alive(supervisord) and alive(quiet)
