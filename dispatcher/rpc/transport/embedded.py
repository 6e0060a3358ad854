"""Embedded, broker-less kombu transport for processes on one machine.

URL: ``embedded://``. Transport options:

* ``data_folder`` (required): the directory shared by every process that should
  reach each other; messages live in ``<data_folder>/messages`` and exchange
  bindings in ``<data_folder>/control``.
* ``polling_interval``: the longest wait between two looks at the folder when
  nothing wakes the consumer (seconds).

It is kombu's filesystem transport with two fixes:

* a message is written to a temporary name and renamed into place, so a reader
  in another process never sees a half-written (or empty) file;
* a reader claims a message by renaming it, so two consumers of one queue never
  both receive it.

On Linux a consumer sleeps on inotify and wakes as soon as a message lands, so
idle consumers cost next to no CPU and delivery takes well under a millisecond;
elsewhere it falls back to polling every ``polling_interval``.

Capabilities: direct, topic and fanout exchanges; at-most-once delivery of
messages held unacknowledged by a consumer that crashes; no queue expiry, no
message TTL, no AMQP heartbeats.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem, virtual
from kombu.utils.json import dumps, loads

__all__ = ["SCHEME", "Channel", "Transport", "register"]

SCHEME = "embedded"

#: The longest a consumer sleeps without looking at the folder, even with inotify.
_MAX_IDLE_WAIT = 1.0

_IN_MOVED_TO = 0x00000080
_IN_CLOSE_WRITE = 0x00000008
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


def register() -> None:
    """Make ``embedded://`` URLs resolve to this transport."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")


class _Inotify:
    """A minimal inotify watch on one directory (Linux only)."""

    def __init__(self, folder: str) -> None:
        libc_name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = libc.inotify_add_watch(fd, folder.encode(), _IN_MOVED_TO | _IN_CLOSE_WRITE)
        if wd < 0:
            os.close(fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch failed")
        self.fd = fd

    def clear(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def wait(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            select.select([self.fd], [], [], timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Channel(filesystem.Channel):
    """A filesystem channel with atomic writes and claim-by-rename reads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for folder in (self._messages, self._claimed, str(self.control_folder)):
            os.makedirs(folder, exist_ok=True)

    @property
    def _root(self) -> Path:
        folder = self.transport_options.get("data_folder")
        if not folder:
            raise ValueError("the embedded transport needs the 'data_folder' transport option")
        return Path(folder)

    @property
    def _messages(self) -> str:
        return str(self._root / "messages")

    @property
    def _claimed(self) -> str:
        return str(self._root / "claimed")

    @property
    def control_folder(self) -> Path:
        return self._root / "control"

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{time.time_ns():020d}_{uuid.uuid4().hex}.{queue}.msg"
        temporary = os.path.join(self._messages, f".tmp-{uuid.uuid4().hex}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(dumps(payload).encode("utf-8"))
            os.rename(temporary, os.path.join(self._messages, name))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(exc.errno, exc.strerror, str(self._root)) from exc
            raise

    def _queue_files(self, queue: str) -> list[str]:
        wanted = f"{queue}.msg"
        return sorted(
            name for name in os.listdir(self._messages) if name.partition(".")[2] == wanted
        )

    def _get(self, queue: str) -> Any:
        for name in self._queue_files(queue):
            claimed = os.path.join(self._claimed, f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            try:
                os.rename(os.path.join(self._messages, name), claimed)
            except FileNotFoundError:
                continue  # another consumer claimed it first
            try:
                with open(claimed, "rb") as handle:
                    payload = handle.read()
            finally:
                os.unlink(claimed)
            return loads(payload.decode("utf-8"))
        raise Empty()

    def _purge(self, queue: str) -> int:
        count = 0
        for name in self._queue_files(queue):
            try:
                os.unlink(os.path.join(self._messages, name))
                count += 1
            except FileNotFoundError:
                pass
        return count

    def _size(self, queue: str) -> int:
        return len(self._queue_files(queue))


class Transport(filesystem.Transport):
    """The embedded transport (see the module docstring)."""

    Channel = Channel
    driver_type = SCHEME
    driver_name = SCHEME
    global_state = virtual.BrokerState()

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._watch: _Inotify | None = None
        self._watch_failed = False

    def _watcher(self) -> _Inotify | None:
        if self._watch is None and not self._watch_failed:
            folder = self.client.transport_options.get("data_folder")
            try:
                messages = os.path.join(folder, "messages")
                os.makedirs(messages, exist_ok=True)
                self._watch = _Inotify(messages)
            except (OSError, AttributeError, TypeError):
                self._watch_failed = True
        return self._watch

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        start = time.monotonic()
        watch = self._watcher()
        while True:
            if watch is not None:
                watch.clear()
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            elapsed = time.monotonic() - start
            if timeout is not None and elapsed >= timeout:
                raise TimeoutError()
            remaining = _MAX_IDLE_WAIT if timeout is None else timeout - elapsed
            if watch is not None:
                watch.wait(min(remaining, _MAX_IDLE_WAIT))
            else:
                time.sleep(min(remaining, self.polling_interval or 0.01))

    def close_connection(self, connection: Any) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        super().close_connection(connection)
