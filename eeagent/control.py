"""The seam between the agent and whatever actually runs processes.

:class:`ProcessControl` is what the agent core needs from a process backend:
register-and-start a program, stop it, forget it, and report every program's
state in one cheap call. :mod:`eeagent.supervisor` implements it over supervisord's
XML-RPC interface; :mod:`eeagent.fake` implements it in memory for fast tests.

Programs are named by the agent (``<upid>-<round>``, see
:func:`eeagent.parameters.program_name`); a backend never invents names.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "Attachment",
    "LogStream",
    "ProcessControl",
    "ProgramSpec",
    "ProgramState",
    "ProgramStatus",
]

LogStream = Literal["stdout", "stderr"]


class ProgramState(enum.Enum):
    """A program's state as the backend sees it (supervisord's process states)."""

    STOPPED = "STOPPED"  # never started, or stopped on request
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"  # the spawn failed; about to give up (startretries=0)
    STOPPING = "STOPPING"
    EXITED = "EXITED"  # exited by itself (exit_status says how)
    FATAL = "FATAL"  # could not be started at all (spawn_error says why)
    UNKNOWN = "UNKNOWN"

    @property
    def alive(self) -> bool:
        """Whether a process may exist for a program in this state."""
        return self in (ProgramState.STARTING, ProgramState.RUNNING, ProgramState.STOPPING)


@dataclass(frozen=True)
class ProgramSpec:
    """Everything needed to start one program.

    Attributes:
        name: the program name, unique within the backend.
        argv: the command: the executable first, then its arguments, executed
            without a shell.
        env: variables added to the inherited environment.
        working_directory: where it starts (``None``: the backend's default).
        user: the account it runs as (``None``: the backend's own).
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    working_directory: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class ProgramStatus:
    """One program's state, as reported by :meth:`ProcessControl.poll`.

    Attributes:
        name: the program name.
        state: the backend state.
        pid: the process id while one exists, else 0.
        exit_status: the exit code once it exited by itself (-1: killed by a signal).
        signal: the number of the signal that killed it (``exit_status`` -1), when
            the backend knows it; ``None`` otherwise.
        spawn_error: why it could not be started, when it could not.
        started: whether a process was ever spawned for it.
        identity: an opaque token that identifies the process across pid reuse
            (boot id and start time on Linux), or ``None`` when unknown.
    """

    name: str
    state: ProgramState
    pid: int = 0
    exit_status: int | None = None
    spawn_error: str = ""
    started: bool = False
    identity: str | None = None
    signal: int | None = None


@dataclass(frozen=True)
class Attachment:
    """What :meth:`ProcessControl.open` and :meth:`ProcessControl.recover` found.

    Attributes:
        instance: identifies the backend instance (e.g. supervisord's pid); a
            different value means every program of the previous instance is gone.
        fresh: the backend was started now rather than reattached to.
    """

    instance: str
    fresh: bool


class ProcessControl(Protocol):
    """Runs programs for the agent.

    The agent calls every method from one thread at a time (under its lock), so
    implementations need no locking of their own. Methods other than
    :meth:`open`, :meth:`recover` and :meth:`close` must return quickly: they never
    wait for a program to start or stop.
    """

    def open(self) -> Attachment:
        """Reattach to a running backend, or start a new one.

        Called once, before anything else.

        Raises:
            BackendStartError: no backend is running and none could be started.
        """
        ...

    def recover(self) -> Attachment:
        """Start a new backend after the previous one died (its programs are gone).

        Raises:
            BackendStartError: it could not be started; the agent retries later.
        """
        ...

    def start(self, spec: ProgramSpec) -> None:
        """Register ``spec`` and start its process without waiting for it.

        Raises:
            SpawnError: the process cannot be started; the message says why.
            BackendUnavailableError: the backend is gone.
        """
        ...

    def stop(self, name: str) -> bool:
        """Ask a program's process to stop (SIGTERM to its process group).

        Returns:
            Whether a stop was sent (``False``: it was not running).

        Raises:
            BackendUnavailableError: the backend is gone.
        """
        ...

    def resignal(self, name: str) -> None:
        """Send the stop signal again to a program that is still stopping."""
        ...

    def remove(self, name: str) -> None:
        """Forget a program that is not running, with its logs; unknown names are ignored.

        Raises:
            BackendUnavailableError: the backend is gone.
        """
        ...

    def poll(self) -> dict[str, ProgramStatus]:
        """Return the status of every program the backend knows, by name.

        Raises:
            BackendUnavailableError: the backend is gone.
        """
        ...

    def read_log(self, name: str, stream: LogStream, tail_bytes: int) -> bytes:
        """Return the last ``tail_bytes`` bytes a program wrote to ``stream`` (may be empty)."""
        ...

    def log_size(self, name: str) -> int:
        """Return the bytes a program's captured output takes on disk (both streams,
        rotated files included); 0 when it has none."""
        ...

    def drop_logs(self, name: str) -> None:
        """Delete a program's captured output (both streams, rotated files included),
        freeing its space even if the backend still holds a file open; the program
        stays registered. Called only for a program that has ended; files already
        gone are ignored.

        Raises:
            OSError: a file exists but cannot be deleted.
        """
        ...

    def kill_stray(self, processes: Iterable[tuple[int, str | None]]) -> list[int]:
        """Kill leftover processes of a backend that died, given ``(pid, identity)`` pairs.

        Only processes whose identity still matches are killed (their whole process
        group, with SIGKILL), so a reused pid is never hit.

        Returns:
            The pids that were killed.
        """
        ...

    def close(self, *, stop_programs: bool) -> None:
        """Disconnect; with ``stop_programs``, stop every program and the backend too.

        Must not raise: it is called while the agent shuts down.
        """
        ...
