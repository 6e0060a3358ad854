"""A cgroup (v2) per program, where the agent may create them.

A process cannot leave its cgroup (only a process allowed to write the cgroup's
files can move it), whatever it does with its session, its parentage or its
environment. So where the agent can create cgroups, every program is spawned into
a cgroup of its own and :mod:`eeagent.reaper` adds its members to what a sweep
finds; elsewhere the environment marker alone finds them.

Where: the cgroup v2 hierarchy (the ``cgroup2`` mount in ``/proc/self/mountinfo``:
``/sys/fs/cgroup`` on a unified host, ``/sys/fs/cgroup/unified`` on a hybrid one),
under the agent's own cgroup (``0::<path>`` in ``/proc/self/cgroup``)::

    <agent's cgroup>/<supervisord identifier>/supervisord   supervisord itself
    <agent's cgroup>/<supervisord identifier>/<token>       one per program

No controller is enabled: the cgroups only group processes. The agent needs write
access there: root, or a delegated subtree (systemd ``Delegate=yes``); without it
(or without a ``cgroup2`` mount) :meth:`Cgroups.discover` returns ``None``.

How a program gets in without a wrapper around its command: supervisord forks the
program inside ``startProcess``, so the agent moves supervisord into the
program's cgroup just before that call and back to its own just after (both under
the agent's lock; supervisord starts processes only when asked to, since programs
never restart by themselves). The child is born in the program's cgroup, before
it can run any code. If the agent dies in between, supervisord stays in that
cgroup until the next agent moves it back; it is never signalled either way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Cgroups"]

log = logging.getLogger(__name__)

_SUPERVISORD = "supervisord"


def _unescape(field: str) -> str:
    """A ``/proc/self/mountinfo`` path field (``\\040`` for a space...)."""
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def _own_cgroup() -> Path | None:
    """The directory of this process's cgroup v2, or ``None`` without one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return None
    for line in mounts:
        fields, _, rest = line.partition(" - ")
        if rest.split(" ", 1)[0] != "cgroup2":
            continue
        parts = fields.split(" ")
        root, mountpoint = _unescape(parts[3]), _unescape(parts[4])
        if own == root or own.startswith(root.rstrip("/") + "/"):
            relative = own[len(root) :].lstrip("/")
            return Path(mountpoint) / relative if relative else Path(mountpoint)
    return None


class Cgroups:
    """The cgroups of one agent's programs (see the module docstring).

    Args:
        base: ``<agent's cgroup>/<supervisord identifier>`` (exists).
    """

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def discover(cls, identifier: str, *, create: bool = True) -> Cgroups | None:
        """Create this agent's cgroup directory, or return ``None`` where it cannot.

        With ``create=False``, only an existing directory is returned (to clean it up).
        """
        own = _own_cgroup()
        if own is None:
            return None
        base = own / identifier
        if not create:
            return cls(base) if base.is_dir() else None
        try:
            base.mkdir(exist_ok=True)
            (base / _SUPERVISORD).mkdir(exist_ok=True)
        except OSError as exc:
            log.info("no cgroup per process (cannot create %s: %s)", base, exc.strerror)
            return None
        if not os.access(base / _SUPERVISORD / "cgroup.procs", os.W_OK):
            log.info("no cgroup per process (%s is not writable)", base)
            return None
        log.info("a cgroup per process under %s", base)
        return cls(base)

    def adopt(self, supervisord: int) -> None:
        """Put supervisord into its own cgroup (e.g. after an agent died mid-spawn).

        Raises:
            OSError: it cannot be moved.
        """
        self._move(supervisord, self.base / _SUPERVISORD)

    def enter(self, key: str, supervisord: int) -> None:
        """Move supervisord into program ``key``'s cgroup (created if needed), to spawn it.

        Raises:
            OSError: the cgroup cannot be created or supervisord moved into it.
        """
        group = self.base / key
        group.mkdir(exist_ok=True)
        self._move(supervisord, group)

    def members(self, keys: Iterable[str]) -> set[int]:
        """The pids in the cgroups of programs ``keys`` (missing cgroups: none)."""
        pids: set[int] = set()
        for key in keys:
            try:
                text = (self.base / key / "cgroup.procs").read_text()
            except OSError:
                continue
            pids.update(int(pid) for pid in text.split())
        return pids

    def release(self, key: str) -> bool:
        """Remove program ``key``'s cgroup if it is empty.

        Returns:
            Whether it is gone (``False``: processes are still in it).
        """
        try:
            (self.base / key).rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("cannot remove cgroup %s: %s", self.base / key, exc.strerror)
            return False
        return True

    def close(self) -> None:
        """Remove every empty cgroup of this agent, and its directory once empty."""
        with contextlib.suppress(OSError):
            for child in self.base.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            self.base.rmdir()

    @staticmethod
    def _move(pid: int, group: Path) -> None:
        with open(group / "cgroup.procs", "w") as handle:
            handle.write(str(pid))
