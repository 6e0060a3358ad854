"""Linux process facts the supervisord adapter relies on (all best effort).

* :func:`identity`: ``<boot id>:<start time>`` of a pid, so a pid recorded before a
  crash is only ever killed if it is still the same process;
* :func:`read_cmdline`: lets the adapter see whether a freshly forked child has
  exec'd yet (its command line then differs from supervisord's);
* :func:`pid_alive` (zombies count as dead) and :func:`tail` of a file;
* :func:`find_marked`: the processes whose environment holds a marker, with all
  their descendants (one pass over ``/proc``), and :func:`signal_same`, which
  signals one of them only if its pid still names the process that was found
  (through a pidfd, so a pid reused in between is never hit).

Elsewhere than Linux the ``/proc`` readers return ``None``, and the adapter simply
does without.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcessInfo",
    "ancestors",
    "find_marked",
    "identity",
    "pid_alive",
    "read_boot_id",
    "read_cmdline",
    "same_alive",
    "signal_same",
    "tail",
]


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


@dataclass(frozen=True)
class ProcessInfo:
    """What :func:`find_marked` learned of one process from ``/proc/<pid>/stat``.

    Attributes:
        ppid: its parent's pid.
        pgid: its process group.
        start: its start time (clock ticks since boot): with the pid, it names the
            process across pid reuse.
    """

    ppid: int
    pgid: int
    start: int


def _read_stat(pid: int) -> tuple[str, ProcessInfo] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[-1].split()
        return fields[0].decode(), ProcessInfo(int(fields[1]), int(fields[2]), int(fields[19]))
    except (OSError, IndexError, ValueError):
        return None


def find_marked(
    markers: Collection[bytes], roots: Collection[int] = (), exclude: Collection[int] = ()
) -> dict[int, ProcessInfo]:
    """Every live process whose environment holds one of ``markers``, and their descendants.

    One pass over ``/proc``: each process's ``stat`` and ``environ`` are read once.
    Environments that cannot be read (another user's, without root) do not match.

    Args:
        markers: whole environment entries, ``NAME=value`` (matched exactly, never
            as a prefix of a longer value).
        roots: pids whose descendants count too, marked or not (e.g. a program's
            main process, whose children may have cleared their environment).
        exclude: pids never returned, and that the walk down to descendants does
            not go through (e.g. the caller, its ancestors, supervisord); pid 1
            and kernel threads are never returned either.

    Returns:
        ``{pid: info}``; zombies are left out.
    """
    needles = [b"\0" + marker + b"\0" for marker in markers]
    table: dict[int, ProcessInfo] = {}
    marked: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _read_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        table[pid] = stat[1]
        if not needles:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        environ = b"\0" + environ
        if any(needle in environ for needle in needles):
            marked.add(pid)
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    found: dict[int, ProcessInfo] = {}
    blocked = {0, 1, 2, *exclude}
    pending = [pid for pid in (*marked, *roots) if pid in table]
    while pending:
        pid = pending.pop()
        if pid in found or pid in blocked or table[pid].ppid == 2:
            continue
        found[pid] = table[pid]
        pending.extend(children.get(pid, ()))
    return found


def same_alive(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start``, and not a zombie."""
    stat = _read_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1].start == start


def ancestors(pid: int) -> set[int]:
    """``pid`` and every process above it up to pid 1 (as ``/proc`` shows them now)."""
    seen = set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        stat = _read_stat(pid)
        if stat is None:
            break
        pid = stat[1].ppid
    return seen


def signal_same(pid: int, start: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` if it is still the process that started at ``start``.

    The check and the signal go through a pidfd, so a pid that was reused since the
    process was found is never signalled (where pidfds are unavailable, the window
    between the check and ``kill`` is only that of two system calls).

    Returns:
        Whether the signal was sent.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd support: check, then kill
        fd = -1
    try:
        stat = _read_stat(pid)
        if stat is None or stat[1].start != start:
            return False
        if fd >= 0:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
