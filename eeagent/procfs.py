"""Linux process facts the supervisord adapter relies on (all best effort).

* :func:`identity`: ``<boot id>:<start time>`` of a pid, so a pid recorded before a
  crash is only ever killed if it is still the same process;
* :func:`read_cmdline`: lets the adapter see whether a freshly forked child has
  exec'd yet (its command line then differs from supervisord's);
* :func:`pid_alive` (zombies count as dead) and :func:`tail` of a file.

Elsewhere than Linux the ``/proc`` readers return ``None``, and the adapter simply
does without.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["identity", "pid_alive", "read_boot_id", "read_cmdline", "tail"]


def tail(path: Path, size: int) -> bytes:
    """The last ``size`` bytes of ``path`` (empty when it does not exist)."""
    if size <= 0:
        return b""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            handle.seek(max(0, end - size))
            return handle.read(size)
    except FileNotFoundError:
        return b""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def read_cmdline(pid: int) -> bytes | None:
    """The raw ``/proc/<pid>/cmdline``, or ``None`` when it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def read_boot_id() -> str | None:
    """This boot's id (it changes at every reboot), or ``None`` off Linux."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def identity(pid: int, boot_id: str | None) -> str | None:
    """``<boot id>:<start time>`` of ``pid`` (Linux), or ``None`` when unknown."""
    if boot_id is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    # Field 22 of stat (starttime) is the 20th after the command name.
    return f"{boot_id}:{int(fields[19])}" if len(fields) > 19 else None
