"""The process table, as tests that look for leftovers see it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pool_processes"]

#: What an agent or its supervisord has in its command line.
POOL_WORDS = ("supervisord", "eeagent")


def pool_processes(directory: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live ``supervisord`` or ``pd-eeagent`` process
    whose command line or working directory lies under ``directory``."""
    root = str(directory.resolve())
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, IndexError):
            continue
        if state == b"Z" or not any(word in cmdline for word in POOL_WORDS):
            continue
        if root in cmdline or cwd == root or cwd.startswith(root + "/"):
            found.append((pid, cmdline))
    return found
