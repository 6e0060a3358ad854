"""The agent's state file and home-directory lock.

``<home>/state.json`` holds everything an agent needs to pick up where a previous
one stopped, ``kill -9`` included::

    {"version": 1,
     "agent": "<eeagent.name>",
     "backend": "<supervisord instance: its pid>",
     "processes": [<ProcessRecord>...],      # upid, round, parameters, state, msg,
                                             # exit_code, program, pid, identity...
     "retiring": [<RetiringProgram>...],     # programs being stopped and removed
     "terminates": [<RememberedTerminate>...]}  # terminates that came before their launch

It is rewritten after every change, atomically: written to a temporary file in
the same directory, then renamed over the old one, so a reader (or a restarted
agent) sees either the old or the new content, never a mix. It is not fsynced:
the one failure that would need it, the machine crashing, also takes supervisord
and every process with it, and the agent then reports them lost anyway.

``<home>/agent.lock`` is held (``flock``) for the agent's lifetime, so that two
agents never share a home directory and its supervisord.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eeagent.errors import AgentLockedError, PersistenceError
from eeagent.records import ProcessRecord, RememberedTerminate, RetiringProgram

__all__ = ["STATE_VERSION", "AgentLock", "AgentSnapshot", "StateStore"]

log = logging.getLogger(__name__)

#: Format version of ``state.json``; a file with another version is not loaded.
STATE_VERSION = 1


class AgentSnapshot(BaseModel):
    """The content of ``state.json``."""

    model_config = ConfigDict(extra="ignore")

    version: int = STATE_VERSION
    agent: str
    backend: str | None = None
    processes: list[ProcessRecord] = Field(default_factory=list)
    retiring: list[RetiringProgram] = Field(default_factory=list)
    terminates: list[RememberedTerminate] = Field(default_factory=list)


class StateStore:
    """Reads and atomically rewrites one agent's ``state.json``.

    Args:
        path: the state file (its directory must exist).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> AgentSnapshot | None:
        """Return the saved snapshot, or ``None`` when there is none yet.

        Raises:
            PersistenceError: the file exists but cannot be read or understood.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PersistenceError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PersistenceError(f"{self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise PersistenceError(f"{self.path} has unsupported format version {version!r}")
        try:
            return AgentSnapshot.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise PersistenceError(f"{self.path}: {where}: {first['msg']}") from exc

    def save(self, snapshot: AgentSnapshot) -> None:
        """Replace the file with ``snapshot`` (temporary file + rename).

        Raises:
            PersistenceError: the directory is not writable or the disk is full.
        """
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(snapshot.model_dump_json(), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise PersistenceError(f"cannot write {self.path}: {exc.strerror}") from exc

    def quarantine(self) -> Path | None:
        """Move an unreadable state file aside (``state.json.corrupt-<time>``) and return it."""
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PersistenceError(f"cannot move {self.path} aside: {exc.strerror}") from exc
        return target


class AgentLock:
    """An exclusive ``flock`` on ``<home>/agent.lock``, held until :meth:`release`.

    Args:
        path: the lock file (created with its parent directories).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] | None = None

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            AgentLockedError: another process holds it.
            PersistenceError: the file cannot be created.
        """
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            handle = open(self.path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as exc:
            raise PersistenceError(f"cannot create {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AgentLockedError(
                f"another pd-eeagent is running with home directory {self.path.parent}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
