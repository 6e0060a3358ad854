"""Running supervisord so that a full disk drops process output, never processes.

Out of the box, supervisord dies on a full disk: a failed write of a program's
output prints a traceback to supervisord's stderr (a file on the same disk), that
print fails too, the error escapes its event loop and supervisord exits, taking
every program down with it (their output pipes close).

The agent therefore runs supervisord through this file (``python -P
eeagent/supdrun.py -c CONFIG``: run by path, it imports nothing of the agent), which
changes two things in supervisord's log handlers before starting it:

* **Output keeps a reserve free.** A program's output (and supervisord's own log)
  is written only while the filesystem holding it keeps more than
  :func:`reserve_bytes` free: ``max(4 MiB, 5 %)`` of the filesystem, at most
  64 MiB. Output that does not fit is dropped (a one-line note in the log tells how
  many bytes once writing resumes); the program keeps running. The reserve is
  what the agent, the dispatcher and the embedded broker need to go on working
  (heartbeats, a ``terminate``, the dispatcher's database) while processes fill
  the disk with output.
* **A failed write is dropped.** If a write fails anyway (the disk was filled by
  something else), the error is dropped instead of printed; a rotation that
  fails reopens the log for appending.

And one more: **supervisord ends when its configuration file is gone** (checked
every :data:`ORPHAN_CHECK_SECONDS`; gone twice in a row). Its home was removed
(a local node's directory deleted under a running pool): no agent can ever
reattach to it, so it stops its programs and exits instead of running for ever.

With a ``supdexe`` configured, supervisord runs as given, without these changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any

__all__ = [
    "ORPHAN_CHECK_SECONDS",
    "RESERVE_FRACTION",
    "RESERVE_MAX",
    "RESERVE_MIN",
    "install",
    "main",
    "reserve_bytes",
    "watch_config",
]

#: Seconds between two looks for the configuration file (see the module docstring).
ORPHAN_CHECK_SECONDS = 5.0

#: Free space output never uses: a fraction of the filesystem, between two bounds.
RESERVE_FRACTION = 0.05
RESERVE_MIN = 4 * 1024 * 1024
RESERVE_MAX = 64 * 1024 * 1024


def reserve_bytes(total: int) -> int:
    """The free space output leaves on a filesystem of ``total`` bytes."""
    return min(RESERVE_MAX, max(RESERVE_MIN, int(total * RESERVE_FRACTION)))


def _room(fd: int, size: int) -> bool:
    """Whether ``size`` more bytes fit on ``fd``'s filesystem above the reserve."""
    st = os.fstatvfs(fd)
    if not st.f_blocks:  # a filesystem that reports no size: nothing to keep free
        return True
    free = st.f_bavail * st.f_frsize
    return free - size > reserve_bytes(st.f_blocks * st.f_frsize)


def install() -> None:
    """Patch supervisord's log handlers as the module docstring describes."""
    from supervisor import loggers

    original_handle_error = loggers.Handler.handleError
    file_emit = loggers.FileHandler.emit

    def handle_error(self: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a write failed (disk full): the output is dropped
        original_handle_error(self)

    def emit(self: Any, record: Any) -> None:
        try:
            if self.stream.closed:
                self.stream = open(self.baseFilename, "ab")  # noqa: SIM115
            size = len(record.msg) if isinstance(record.msg, bytes) else 256
            if not _room(self.stream.fileno(), size):
                self.pd_dropped = getattr(self, "pd_dropped", 0) + size
                return
            dropped = getattr(self, "pd_dropped", 0)
            if dropped:
                self.pd_dropped = 0
                note = f"\n[pd-eeagent: {dropped} bytes of output dropped: disk almost full]\n"
                self.stream.write(note.encode())
        except (OSError, ValueError):
            return
        file_emit(self, record)
        # A failed rollover may leave the stream closed: the next emit reopens it.
        with contextlib.suppress(OSError):
            self.doRollover()

    loggers.Handler.handleError = handle_error
    loggers.RotatingFileHandler.emit = emit


def watch_config(path: str, interval: float = ORPHAN_CHECK_SECONDS) -> threading.Thread:
    """End this process (SIGTERM: a clean supervisord shutdown) once ``path`` is gone
    at two looks in a row."""

    def watch() -> None:
        missing = 0
        while True:
            time.sleep(interval)
            missing = 0 if os.path.exists(path) else missing + 1
            if missing >= 2:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="pd-config-watch", daemon=True)
    thread.start()
    return thread


def _config_path(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv[:-1]):
        if arg in ("-c", "--configuration"):
            return os.path.abspath(argv[index + 1])
    return None


def main() -> None:
    """Install the changes and run supervisord with this process's arguments."""
    install()
    from supervisor import supervisord

    config = _config_path(sys.argv[1:])
    if config is not None:
        watch_config(config)

    supervisord.main()


if __name__ == "__main__":
    main()
