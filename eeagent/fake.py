"""An in-memory :class:`~eeagent.control.ProcessControl` for fast, deterministic tests.

It behaves like the supervisord adapter as the agent sees it: a started program is
``RUNNING`` at once, a stop makes it ``STOPPING`` and the next :meth:`poll` finds
it ``STOPPED``, a removed program disappears. Tests drive everything else
explicitly::

    control = FakeProcessControl()
    control.spawn_errors["/missing"] = "NO_FILE: no such file"   # start() fails
    control.exit("p-1", 3)          # the process exits with status 3
    control.exit("p-1", -1, signal=9)   # the process is killed by SIGKILL
    control.lose_stops = True       # stop signals are lost until resignal()
    control.crash()                 # the backend dies with all its processes
    control.write_log("p-1", "stdout", b"hello")
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from eeagent.control import Attachment, LogStream, ProgramSpec, ProgramState, ProgramStatus
from eeagent.errors import BackendFaultError, BackendStartError, BackendUnavailableError, SpawnError

__all__ = ["FakeProcessControl", "FakeProgram"]


@dataclass
class FakeProgram:
    """One program of the fake backend (tests may inspect and change it)."""

    spec: ProgramSpec
    state: ProgramState = ProgramState.STOPPED
    pid: int = 0
    exit_status: int | None = None
    signal: int | None = None
    spawn_error: str = ""
    started: bool = False
    stop_lost: bool = False
    signals: int = 0
    logs: dict[str, bytes] = field(default_factory=dict)


class FakeProcessControl:
    """In-memory process backend.

    Attributes:
        programs: the registered programs by name.
        spawn_errors: executable → message; starting it raises :class:`SpawnError`.
        missing_directories: working directories that "do not exist".
        lose_stops: when true, a stop leaves the process ``STOPPING`` until
            :meth:`resignal` (the fork/exec race of the real backend).
        fail_recover: when true, :meth:`recover` raises :class:`BackendStartError`.
        killed: pids passed to :meth:`kill_stray` that were killed.
        orphan_logs: the output of programs lost in a :meth:`crash`, by name (a real
            backend's log files stay on disk when it dies).
        calls: the names of the methods called, in order.
    """

    def __init__(self) -> None:
        self.programs: dict[str, FakeProgram] = {}
        self.spawn_errors: dict[str, str] = {}
        self.missing_directories: set[str] = set()
        self.lose_stops = False
        self.fail_recover = False
        self.killed: list[int] = []
        self.orphan_logs: dict[str, dict[str, bytes]] = {}
        self.calls: list[str] = []
        self.alive = True
        self.instance = 1
        self.closed = False
        self._next_pid = 1000
        self._opened_before = False
        self._stray: set[int] = set()
        #: Test controls may run on another thread than the agent's monitor: a poll
        #: never sees a program half-changed by them.
        self._lock = threading.Lock()

    # -- ProcessControl -----------------------------------------------------------

    def open(self) -> Attachment:
        self.calls.append("open")
        self.closed = False
        if self.alive and self._opened_before:
            return Attachment(instance=str(self.instance), fresh=False)
        self._opened_before = True
        if not self.alive:
            return self._restart()
        return Attachment(instance=str(self.instance), fresh=True)

    def recover(self) -> Attachment:
        self.calls.append("recover")
        if self.fail_recover:
            raise BackendStartError("fake backend cannot start")
        return self._restart()

    def start(self, spec: ProgramSpec) -> None:
        self.calls.append("start")
        self._check_alive()
        if spec.working_directory in self.missing_directories:
            raise SpawnError(
                f"cannot start: working directory {spec.working_directory!r} does not exist"
            )
        program = FakeProgram(spec=spec)
        self.programs[spec.name] = program
        self.orphan_logs.pop(spec.name, None)
        error = self.spawn_errors.get(spec.argv[0])
        if error is not None:
            program.spawn_error = error
            raise SpawnError(f"cannot start: {error}")
        self._next_pid += 1
        program.pid = self._next_pid
        program.state = ProgramState.RUNNING
        program.started = True

    def stop(self, name: str) -> bool:
        self.calls.append("stop")
        self._check_alive()
        program = self.programs.get(name)
        if program is None or program.state not in (ProgramState.STARTING, ProgramState.RUNNING):
            return False
        program.state = ProgramState.STOPPING
        program.stop_lost = self.lose_stops
        program.signals += 1
        return True

    def resignal(self, name: str) -> None:
        self.calls.append("resignal")
        self._check_alive()
        program = self.programs.get(name)
        if program is not None and program.state is ProgramState.STOPPING:
            program.signals += 1
            program.stop_lost = False

    def remove(self, name: str) -> None:
        self.calls.append("remove")
        self._check_alive()
        self.orphan_logs.pop(name, None)
        program = self.programs.get(name)
        if program is None:
            return
        if program.state.alive:
            raise BackendFaultError(
                f"STILL_RUNNING: {name}", code=91, fault=f"STILL_RUNNING: {name}"
            )
        del self.programs[name]

    def poll(self) -> dict[str, ProgramStatus]:
        self._check_alive()
        with self._lock:
            for program in self.programs.values():
                if program.state is ProgramState.STOPPING and not program.stop_lost:
                    program.state = ProgramState.STOPPED
                    program.pid = 0
            return {name: self._status(program) for name, program in self.programs.items()}

    def read_log(self, name: str, stream: LogStream, tail_bytes: int) -> bytes:
        if tail_bytes <= 0:
            return b""
        return self._logs(name).get(stream, b"")[-tail_bytes:]

    def log_size(self, name: str) -> int:
        self.calls.append("log_size")
        return sum(len(data) for data in self._logs(name).values())

    def drop_logs(self, name: str) -> None:
        self.calls.append("drop_logs")
        self._logs(name).clear()

    def kill_stray(self, processes: Iterable[tuple[int, str | None]]) -> list[int]:
        self.calls.append("kill_stray")
        killed = [pid for pid, identity in processes if pid in self._stray and identity]
        self._stray.difference_update(killed)
        self.killed.extend(killed)
        return killed

    def close(self, *, stop_programs: bool) -> None:
        self.calls.append("close")
        self.closed = True
        if stop_programs:
            for program in self.programs.values():
                if program.state.alive:
                    program.state = ProgramState.STOPPED
                    program.pid = 0
            self.programs.clear()
            self.alive = False

    # -- test controls ------------------------------------------------------------

    def exit(self, name: str, status: int, *, signal: int | None = None) -> None:
        """Make a running program's process exit with ``status``.

        Args:
            name: the program.
            status: its exit status (-1: killed by a signal).
            signal: the signal that killed it, when the backend would know it
                (only with ``status`` -1).
        """
        if signal is not None and status != -1:
            raise ValueError("a process killed by a signal has exit status -1")
        with self._lock:
            program = self.programs[name]
            program.state = ProgramState.EXITED
            program.exit_status = status
            program.signal = signal
            program.pid = 0

    def fatal(self, name: str, error: str) -> None:
        """Make a program end in ``FATAL`` with a spawn error."""
        with self._lock:
            program = self.programs[name]
            program.state = ProgramState.FATAL
            program.spawn_error = error
            program.pid = 0

    def crash(self) -> None:
        """The backend dies: its programs are gone, their processes become strays."""
        self.alive = False
        self._stray.update(p.pid for p in self.programs.values() if p.pid)
        self.orphan_logs.update((name, p.logs) for name, p in self.programs.items())
        self.programs.clear()

    def write_log(self, name: str, stream: LogStream, data: bytes) -> None:
        """Append ``data`` to a program's captured ``stream``."""
        program = self.programs[name]
        program.logs[stream] = program.logs.get(stream, b"") + data

    def state_of(self, name: str) -> ProgramState | None:
        """A program's state, or ``None`` when it is not registered."""
        program = self.programs.get(name)
        return program.state if program else None

    # -- internals ----------------------------------------------------------------

    def _restart(self) -> Attachment:
        self.alive = True
        self.instance += 1
        self.programs.clear()
        return Attachment(instance=str(self.instance), fresh=True)

    def _logs(self, name: str) -> dict[str, bytes]:
        program = self.programs.get(name)
        if program is not None:
            return program.logs
        return self.orphan_logs.get(name, {})

    def _check_alive(self) -> None:
        if not self.alive:
            raise BackendUnavailableError("fake backend is down")

    @staticmethod
    def _status(program: FakeProgram) -> ProgramStatus:
        return ProgramStatus(
            name=program.spec.name,
            state=program.state,
            pid=program.pid,
            exit_status=program.exit_status,
            signal=program.signal,
            spawn_error=program.spawn_error,
            started=program.started,
            identity=f"fake:{program.pid}" if program.pid else None,
        )
