"""The nonces of the commands an agent accepted, kept with its state across restarts.

A signed command is refused once its nonce was seen (see :mod:`dashi.security`);
this journal keeps those nonces in ``<home>/nonces.log`` so that a command captured
on the wire cannot be replayed after the agent restarts, within the replay window
either. One line per accepted nonce, ``<accepted at> <nonce>``, appended (and
flushed) before the command is carried out; the verifier rewrites the file,
atomically, as old nonces leave the window. A torn last line (a crash while
appending) is skipped on load. The file is made with mode 0600.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from eeagent.errors import PersistenceError

__all__ = ["FileNonceJournal"]

log = logging.getLogger(__name__)


class FileNonceJournal:
    """A :class:`~dashi.security.NonceJournal` in one append-only file.

    Args:
        path: the journal file (created on first use).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileNonceJournal({str(self.path)!r})"

    def load(self) -> list[tuple[float, str]]:
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise PersistenceError(f"cannot read {self.path}: {exc.strerror}") from exc
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 2:
                continue
            try:
                entries.append((float(parts[0]), parts[1]))
            except ValueError:
                continue
        return entries

    def append(self, accepted_at: float, nonce: str) -> None:
        line = f"{accepted_at:.6f} {nonce}\n".encode("ascii")
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise PersistenceError(f"cannot write {self.path}: {exc.strerror}") from exc

    def rewrite(self, entries: Iterable[tuple[float, str]]) -> None:
        text = "".join(f"{at:.6f} {nonce}\n" for at, nonce in entries).encode("ascii")
        temporary = self.path.with_name(self.path.name + ".tmp")
        with self._lock:
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, text)
                finally:
                    os.close(fd)
                os.replace(temporary, self.path)
            except OSError as exc:
                log.warning("cannot rewrite %s (%s): kept as it is", self.path, exc.strerror)
