"""The embedded broker's earlier flat layout, and its migration to the current one.

The earlier layout kept every message in one folder, ``messages/``, named
``<time>_<uuid>.<queue>.msg`` (``claimed/`` held those being read, with a
``.<pid>.<token>`` suffix), and each exchange's bindings in
``control/<exchange>.exchange`` (a JSON list of ``[routing_key, pattern, queue]``).
:func:`migrate` runs once, under a lock, when a folder of that layout is first
opened: bound queues become queues that expire after
:data:`~dashi.transport.folder.LEGACY_QUEUE_EXPIRES` unless a consumer
declares them again, their messages move in, the rest is dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil

from dashi.transport.folder import (
    _FILE_MODE,
    _MSG,
    LEGACY_QUEUE_EXPIRES,
    BrokerFolder,
    QueueGoneError,
    _listdir,
)

__all__ = ["migrate"]

log = logging.getLogger(__name__)


def migrate(broker: BrokerFolder) -> None:
    """Move the earlier flat layout of ``broker`` into the current one (once, under a lock)."""
    fd = os.open(broker.root / "migrate.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        control, messages = broker.root / "control", broker.root / "messages"
        if not control.exists() and not messages.exists():
            return  # another process did it
        for table in sorted(control.glob("*.exchange")) if control.is_dir() else []:
            exchange = table.name[: -len(".exchange")]
            try:
                rows = json.loads(table.read_bytes())
            except (OSError, ValueError):
                continue
            for row in rows if isinstance(rows, list) else []:
                if not isinstance(row, list) or len(row) != 3:
                    continue
                routing_key, _, queue = (str(part) for part in row)
                if not broker.has_queue(queue):
                    broker.declare_queue(queue, expires=LEGACY_QUEUE_EXPIRES)
                try:
                    broker.bind(queue, exchange, routing_key)
                except QueueGoneError:
                    continue
        moved = dropped = 0
        for folder in (messages, broker.root / "claimed"):
            for name in _listdir(folder):
                prefix, _, rest = name.partition(".")
                queue = rest.rsplit(_MSG, 1)[0] if _MSG in rest else ""
                target = broker.queue_dir(queue) if queue else None
                try:
                    if target is not None and target.is_dir():
                        os.rename(folder / name, target / f"{prefix}{_MSG}")
                        moved += 1
                    else:
                        os.unlink(folder / name)
                        dropped += 1
                except OSError:
                    continue
        for folder in (control, messages, broker.root / "claimed"):
            shutil.rmtree(folder, ignore_errors=True)
        log.info(
            "embedded broker %s: migrated the earlier layout (%d messages kept, %d dropped)",
            broker.root,
            moved,
            dropped,
        )
    finally:
        os.close(fd)
