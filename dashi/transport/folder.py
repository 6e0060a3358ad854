"""The on-disk broker of the embedded transport: queues, bindings, leases and sweeps.

Several processes (the dispatcher, its local agents, ``pd-cli``) share one folder,
``<state_dir>/broker``. Everything is private to the owner (directories 0700,
files 0600, whatever the umask). Layout::

    queues/<queue>/               one directory per queue (created whole by a rename)
        meta.json                 {"name", "expires" (seconds or null), "auto_delete"};
                                  its mtime is the last time the queue was used
        lock                      flock: shared while a consumer registers, exclusive
                                  while a sweep looks at (or deletes) the queue
        <time_ns>_<uuid>.msg      messages, read in name order
        claimed/<msg>~<lease>     a message being read by the consumer holding <lease>
        consumers/<lease>         one marker per consuming connection
        bound/<exchange> <key>    the queue's bindings (to remove them with it)
    bindings/<exchange>/<key>/<queue>   the routing index: a publish lists one folder
    leases/<lease>                held with an exclusive flock by a live connection
    tmp/                          messages being written (renamed into their queue)
    trash/                        deleted queues on their way out

Names are percent-encoded into file names (:func:`encode`). A publish costs one
listing of its routing key's folder plus one write and one rename; a read lists
its own queue's folder only: neither depends on unrelated queues or messages.

**Expiry, as RabbitMQ's ``x-expires``.** A queue declared with an expiry is
deleted (with its bindings and messages) once nobody has consumed or declared it
for that long; an ``auto_delete`` queue without consumers goes after
:data:`AUTO_DELETE_GRACE`. A consumer keeps its queue alive through its
connection's lease: the kernel drops the lease's flock when the process dies,
however it dies, so a killed consumer's queues expire too.

**Sweeps** (:meth:`BrokerFolder.sweep`, run by the transport in a background
thread when a connection opens and every :data:`SWEEP_INTERVAL` seconds while a
consumer waits, one process at a time) delete expired queues, give the messages a dead consumer had claimed
back to their queue, and remove dead leases, dangling bindings, stale temporary
files and the trash.

**Races.** Messages and queue directories are written under a temporary name and
renamed into place, so nobody sees them half-written. A write that fails (a full
disk) removes its file at once; a message that cannot be written for lack of
space raises an ``OSError`` (``ENOSPC``) whose file name is the broker's folder. A queue is deleted by
renaming its directory into ``trash/`` under its exclusive ``lock``: a publish
renaming a message into it either lands before (the message goes with the queue)
or fails (the message is dropped, as on a broker where the queue was just
deleted); a consumer registers under the shared ``lock`` and checks the queue is
still the one it locked.

**Upgrade.** The earlier flat layout (``messages/``, ``claimed/``, ``control/``)
is migrated when the folder is first opened
(:mod:`dashi.transport.flat_layout`): bound queues become queues that
expire after :data:`LEGACY_QUEUE_EXPIRES` unless a consumer declares them again,
their messages move in, the rest is dropped. Processes still running the earlier
version do not see the new layout.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "AUTO_DELETE_GRACE",
    "LEGACY_QUEUE_EXPIRES",
    "SWEEP_INTERVAL",
    "BrokerFolder",
    "Lease",
    "QueueGoneError",
    "SweepReport",
    "encode",
]

log = logging.getLogger(__name__)

#: Seconds an ``auto_delete`` queue without consumers survives (a client killed
#: before it could delete its reply queue).
AUTO_DELETE_GRACE = 10.0
#: Expiry (seconds) given to the queues found in the earlier layout.
LEGACY_QUEUE_EXPIRES = 60.0
#: Seconds between two sweeps of one folder (whichever process runs them).
SWEEP_INTERVAL = 15.0
#: Temporary files older than this (seconds) belong to a writer that died.
_STALE_TEMPORARY = 60.0

#: What a write raises when the disk (or the user's quota) is full.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_MSG = ".msg"
_MAX_NAME = 200


class QueueGoneError(OSError):
    """The queue does not exist (any more)."""


class BrokerFolderMissingError(FileNotFoundError):
    """The broker's folder does not exist, and the connection may not create it
    (a client's: only services create the folder, so a client finding none
    knows no service has run there)."""

    def __init__(self, root: Path) -> None:
        super().__init__(errno.ENOENT, "no embedded broker folder", str(root))


def encode(name: str) -> str:
    """A file name for a queue, exchange or routing key (reversible unless very long)."""
    text = quote(name, safe="")
    if not text or text.startswith("."):
        text = "%2E" + text[1:] if text else "%00"
    if len(text) > _MAX_NAME:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
        text = f"{text[:150]}~{digest}"
    return text


def _mkdir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, _DIR_MODE)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``; a write that fails (disk full) removes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)


def _touch(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


@dataclass
class SweepReport:
    """What one sweep did."""

    queues_deleted: int = 0
    messages_deleted: int = 0
    claimed_returned: int = 0
    leases_removed: int = 0
    bindings_removed: int = 0


class Lease:
    """A connection's proof of life: ``leases/<id>``, held with an exclusive flock.

    Created under a temporary name, locked, then renamed into place, so nobody
    can find it unlocked while its owner lives.
    """

    def __init__(self, folder: BrokerFolder) -> None:
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        self.path = folder.root / "leases" / self.id
        temporary = folder.root / "tmp" / f"lease-{self.id}"
        self._fd: int | None = os.open(
            temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE
        )
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(temporary, self.path)

    def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


class BrokerFolder:
    """Queues, bindings and leases under one folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.queues = self.root / "queues"
        self.bindings_dir = self.root / "bindings"

    # -- set-up ---------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the folder exists (in either layout)."""
        return self.root.is_dir()

    def ensure(self) -> None:
        """Create the layout (private) and migrate the earlier one if present."""
        if not self.queues.is_dir():
            os.makedirs(self.root.parent, _DIR_MODE, exist_ok=True)
            _mkdir(self.root)
            for name in ("queues", "bindings", "leases", "tmp", "trash"):
                _mkdir(self.root / name)
        if (self.root / "control").exists() or (self.root / "messages").exists():
            from dashi.transport.flat_layout import migrate

            migrate(self)

    # -- queues ---------------------------------------------------------------------

    def queue_dir(self, queue: str) -> Path:
        return self.queues / encode(queue)

    def declare_queue(
        self, queue: str, *, expires: float | None = None, auto_delete: bool = False
    ) -> None:
        """Create the queue, or update its arguments and mark it used."""
        target = self.queue_dir(queue)
        meta = json.dumps({"name": queue, "expires": expires, "auto_delete": auto_delete})
        if not target.exists():
            staging = self.root / "tmp" / f"queue-{uuid.uuid4().hex}"
            os.mkdir(staging, _DIR_MODE)
            for sub in ("claimed", "consumers", "bound"):
                os.mkdir(staging / sub, _DIR_MODE)
            _write_new(staging / "lock", b"")
            _write_new(staging / "meta.json", meta.encode("utf-8"))
            try:
                os.rename(staging, target)
                return
            except OSError:  # declared meanwhile by another process: update that one
                shutil.rmtree(staging, ignore_errors=True)
        current = self._read_meta(target)
        if (
            current is not None
            and current.get("expires") == expires
            and bool(current.get("auto_delete")) == bool(auto_delete)
        ):
            _touch(target / "meta.json")
            return
        temporary = self.root / "tmp" / f"meta-{uuid.uuid4().hex}"
        _write_new(temporary, meta.encode("utf-8"))
        try:
            os.rename(temporary, target / "meta.json")
        except FileNotFoundError:  # deleted meanwhile: declare it afresh
            os.unlink(temporary)
            self.declare_queue(queue, expires=expires, auto_delete=auto_delete)

    def has_queue(self, queue: str) -> bool:
        return self.queue_dir(queue).is_dir()

    def delete_queue(self, queue: str) -> int:
        """Delete a queue, its bindings and its messages; return how many messages went."""
        return self._delete(self.queue_dir(queue), block=True)

    def _delete(self, qdir: Path, *, block: bool) -> int:
        try:
            fd = os.open(qdir / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            if not _same_file(fd, qdir / "lock"):
                return 0
            return self._discard(qdir)
        finally:
            os.close(fd)

    def _discard(self, qdir: Path) -> int:
        """Move a queue (whose lock the caller holds exclusively) to the trash and remove it."""
        trashed = self.root / "trash" / f"{qdir.name}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(qdir, trashed)
        except FileNotFoundError:
            return 0
        for entry in _listdir(trashed / "bound"):
            try:
                exchange, key = json.loads((trashed / "bound" / entry).read_bytes())
                os.unlink(self.bindings_dir / str(exchange) / str(key) / qdir.name)
            except (OSError, ValueError, TypeError):
                continue  # gone already; the sweep removes what dangles
        count = sum(1 for name in _listdir(trashed) if name.endswith(_MSG))
        shutil.rmtree(trashed, ignore_errors=True)
        return count

    # -- bindings -------------------------------------------------------------------

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Route ``routing_key`` on ``exchange`` to ``queue`` (idempotent)."""
        qdir = self.queue_dir(queue)
        ex, key = encode(exchange), encode(routing_key)
        record = json.dumps([exchange, routing_key, queue]).encode("utf-8")
        with contextlib.suppress(FileExistsError):
            try:
                _write_new(qdir / "bound" / _bound_name(ex, key), json.dumps([ex, key]).encode())
            except FileNotFoundError:
                raise QueueGoneError(f"no queue {queue!r}") from None
        folder = self.bindings_dir / ex / key
        for _ in range(5):  # a sweep may remove an empty folder meanwhile
            try:
                _mkdir(folder.parent)
                _mkdir(folder)
                _write_new(folder / qdir.name, record)
                return
            except FileExistsError:
                return
            except FileNotFoundError:
                continue

    def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        qdir = self.queue_dir(queue)
        ex, key = encode(exchange), encode(routing_key)
        for path in (
            self.bindings_dir / ex / key / qdir.name,
            qdir / "bound" / _bound_name(ex, key),
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def routes(self, exchange: str, routing_key: str) -> list[str]:
        """The (encoded) queues bound to ``exchange`` under exactly ``routing_key``."""
        return _listdir(self.bindings_dir / encode(exchange) / encode(routing_key))

    def bindings(self, exchange: str) -> list[tuple[str, str, str]]:
        """Every ``(routing_key, queue, encoded queue)`` bound to ``exchange``."""
        found = []
        top = self.bindings_dir / encode(exchange)
        for key in _listdir(top):
            for entry in _listdir(top / key):
                try:
                    _, routing_key, queue = json.loads((top / key / entry).read_bytes())
                except (OSError, ValueError, TypeError):
                    continue
                found.append((str(routing_key), str(queue), entry))
        return found

    # -- messages -------------------------------------------------------------------

    def put(self, encoded_queue: str, data: bytes) -> bool:
        """Write a message into a queue; ``False`` when the queue does not exist."""
        name = f"{time.time_ns():020d}_{uuid.uuid4().hex}{_MSG}"
        temporary = self.root / "tmp" / name
        try:
            _write_new(temporary, data)
        except OSError as exc:
            if exc.errno in _DISK_FULL:  # named after the folder, not a temporary file
                raise OSError(exc.errno, exc.strerror, str(self.root)) from exc
            raise
        try:
            os.rename(temporary, self.queues / encoded_queue / name)
            return True
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            return False

    def put_routed(self, exchange: str, routing_key: str, data: bytes) -> int:
        """Write a message into every queue bound under ``routing_key``; return how many."""
        delivered = 0
        for encoded in self.routes(exchange, routing_key):
            if self.put(encoded, data):
                delivered += 1
            else:  # a binding left behind by a deleted queue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.bindings_dir / encode(exchange) / encode(routing_key) / encoded)
        return delivered

    def get(self, queue: str, lease: Lease) -> bytes | None:
        """Claim, read and remove the oldest message of ``queue`` (``None``: empty)."""
        qdir = self.queue_dir(queue)
        names = sorted(name for name in _listdir(qdir) if name.endswith(_MSG))
        for name in names:
            claimed = qdir / "claimed" / f"{name}~{lease.id}"
            try:
                os.rename(qdir / name, claimed)
            except FileNotFoundError:
                continue  # another consumer claimed it first (or the queue went)
            try:
                return claimed.read_bytes()
            except FileNotFoundError:
                continue  # the queue was deleted while we read
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(claimed)
        return None

    def size(self, queue: str) -> int:
        return sum(1 for name in _listdir(self.queue_dir(queue)) if name.endswith(_MSG))

    def purge(self, queue: str) -> int:
        qdir = self.queue_dir(queue)
        count = 0
        for name in _listdir(qdir):
            if name.endswith(_MSG):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(qdir / name)
                    count += 1
        return count

    # -- consumers ------------------------------------------------------------------

    def add_consumer(self, queue: str, lease: Lease) -> None:
        """Record that ``lease``'s connection consumes ``queue`` (keeps it alive).

        Raises:
            QueueGoneError: the queue does not exist.
        """
        qdir = self.queue_dir(queue)
        with self._queue_lock(qdir, fcntl.LOCK_SH) as locked:
            if not locked:
                raise QueueGoneError(f"no queue {queue!r}")
            with contextlib.suppress(FileExistsError):
                _write_new(qdir / "consumers" / lease.id, b"")
            _touch(qdir / "meta.json")

    def remove_consumer(self, queue: str, lease: Lease) -> None:
        """The connection stopped consuming: the queue was used until now."""
        qdir = self.queue_dir(queue)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(qdir / "consumers" / lease.id)
            _touch(qdir / "meta.json")

    def has_consumers(self, queue: str) -> bool:
        markers = _listdir(self.queue_dir(queue) / "consumers")
        return any(self.lease_alive(marker) for marker in markers)

    def lease_alive(self, lease_id: str) -> bool:
        """Whether the connection holding ``lease_id`` still lives."""
        try:
            fd = os.open(self.root / "leases" / lease_id, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @contextlib.contextmanager
    def _queue_lock(self, qdir: Path, mode: int) -> Iterator[bool]:
        """Hold the queue's lock; yields ``False`` when the queue is gone (or busy with NB)."""
        try:
            fd = os.open(qdir / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                yield False
                return
            yield _same_file(fd, qdir / "lock")
        finally:
            os.close(fd)

    # -- sweeping -------------------------------------------------------------------

    def sweep_due(self, interval: float = SWEEP_INTERVAL) -> bool:
        """Whether no process swept this folder in the last ``interval`` seconds."""
        try:
            return time.time() - os.stat(self.root / "swept").st_mtime >= interval
        except FileNotFoundError:
            return True

    def sweep(self, now: float | None = None, *, wait: bool = False) -> SweepReport | None:
        """Remove what dead consumers and expired queues left.

        Args:
            now: the time expiries are measured against (epoch seconds).
            wait: wait for a sweep in progress elsewhere to end, then sweep;
                otherwise return ``None`` at once when another sweep runs.
        """
        now = time.time() if now is None else now
        try:
            fd = os.open(
                self.root / "sweep.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE
            )
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            report = SweepReport()
            alive: dict[str, bool] = {}

            def lease_alive(lease_id: str) -> bool:
                if lease_id not in alive:
                    alive[lease_id] = self.lease_alive(lease_id)
                return alive[lease_id]

            for name in _listdir(self.queues):
                self._sweep_queue(self.queues / name, now, lease_alive, report)
            for lease_id in _listdir(self.root / "leases"):
                if not lease_alive(lease_id):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.root / "leases" / lease_id)
                        report.leases_removed += 1
            self._sweep_bindings(report)
            self._sweep_scratch(time.time())  # a writer's age is real time, whatever `now`
            stamp = self.root / "swept"
            if not stamp.exists():
                with contextlib.suppress(FileExistsError):
                    _write_new(stamp, b"")
            _touch(stamp)
            if report.queues_deleted or report.claimed_returned or report.leases_removed:
                log.info("embedded broker %s: swept %s", self.root, report)
            return report
        finally:
            os.close(fd)

    def _sweep_queue(self, qdir: Path, now: float, lease_alive: Any, report: SweepReport) -> None:
        with self._queue_lock(qdir, fcntl.LOCK_EX | fcntl.LOCK_NB) as locked:
            if not locked:
                return  # a consumer is registering, or the queue just went
            live = False
            for marker in _listdir(qdir / "consumers"):
                if lease_alive(marker):
                    live = True
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(qdir / "consumers" / marker)
            for entry in _listdir(qdir / "claimed"):
                message, _, lease_id = entry.rpartition("~")
                if message and not lease_alive(lease_id):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(qdir / "claimed" / entry, qdir / message)
                        report.claimed_returned += 1
            if live:
                _touch(qdir / "meta.json")
                return
            meta = self._read_meta(qdir) or {"expires": LEGACY_QUEUE_EXPIRES}
            limit = meta.get("expires")
            if limit is None and meta.get("auto_delete"):
                limit = AUTO_DELETE_GRACE
            if limit is None:
                return
            try:
                idle = now - os.stat(qdir / "meta.json").st_mtime
            except FileNotFoundError:
                idle = float("inf")
            if idle > float(limit):
                report.messages_deleted += self._discard(qdir)
                report.queues_deleted += 1

    def _sweep_bindings(self, report: SweepReport) -> None:
        for exchange in _listdir(self.bindings_dir):
            for key in _listdir(self.bindings_dir / exchange):
                folder = self.bindings_dir / exchange / key
                for entry in _listdir(folder):
                    if not (self.queues / entry).is_dir():
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(folder / entry)
                            report.bindings_removed += 1
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only when empty
            with contextlib.suppress(OSError):
                os.rmdir(self.bindings_dir / exchange)

    def _sweep_scratch(self, now: float) -> None:
        scratch = self.root / "tmp"
        for name in _listdir(scratch):
            path = scratch / name
            try:
                if now - os.lstat(path).st_mtime < _STALE_TEMPORARY:
                    continue
            except FileNotFoundError:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        for name in _listdir(self.root / "trash"):
            shutil.rmtree(self.root / "trash" / name, ignore_errors=True)

    @staticmethod
    def _read_meta(qdir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((qdir / "meta.json").read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def _bound_name(exchange: str, key: str) -> str:
    """The name of a queue's record of one of its bindings (encoded names in, one file name out)."""
    name = f"{exchange} {key}"
    return name if len(name) <= _MAX_NAME else hashlib.sha256(name.encode()).hexdigest()


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not renamed away meanwhile)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    there = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
