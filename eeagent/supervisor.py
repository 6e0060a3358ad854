"""The supervisord adapter: one private supervisord per agent, driven over XML-RPC.

Capabilities: starts exactly the ``argv`` it is given without a shell (see
:mod:`eeagent.supdconf` for the quoting), per-program environment, working
directory and user, stdout/stderr captured to files of its own, stop of the whole
process group and of every process a program started outside it (see
:mod:`eeagent.reaper`), reattachment to a supervisord that outlived its agent.

Files, all under the agent's home ``<supd_directory>/<eeagent.name>/``:

* ``supervisord.conf``: rewritten (atomically) whenever a program is added or
  removed; its ``[program:*]`` sections are also how a restarted agent learns the
  programs of the supervisord it reattaches to;
* ``supd.sock``: the XML-RPC unix socket (mode 0700). A socket path must fit
  ``sun_path`` (~107 bytes, and supervisord appends ``.<pid>`` while binding), so
  when the home path is too long the socket goes to
  ``/tmp/pd-eeagent-<uid>/<digest of the home path>.sock`` instead, in a directory
  only the agent's user can enter;
* ``supd.pid``, ``supd.log`` (supervisord's own log: also where the adapter learns
  which signal killed a program, see below), ``supervisord.out`` (what it prints
  while starting);
* ``logs/<program>.stdout`` and ``logs/<program>.stderr``: each process's output,
  rotated at 10 MB with one backup (at most 40 MB per process, 40 MB times the
  slots per agent), deleted with the program, or earlier by :meth:`drop_logs`
  once it ended (the agent's log budget, :mod:`eeagent.logbudget`). Output is
  written only while the disk keeps a reserve free, and dropped otherwise (see
  :mod:`eeagent.supdrun`).

URL used for XML-RPC: ``unix://<socket>``, through
:class:`supervisor.xmlrpc.SupervisorTransport` with a socket timeout. Faults and
socket errors are translated into :mod:`eeagent.errors` types here.

What counts as a failed start: only a program that was never executed. supervisord
reaps a child that exits before it answers ``startProcess`` and then answers with a
``SPAWN_ERROR`` fault ("Bad exit code N"); such a program was started, and its exit
is reported by :meth:`SupervisorControl.poll` like any other. A child that could not
become the program (exec, setuid or chdir failed) exits with status 127 after
writing ``supervisor: <reason>`` to the program's stderr; :meth:`~SupervisorControl.poll`
reports it ``FATAL`` with that reason, however fast it happened.

Which signal killed a program: ``getProcessInfo`` gives exit status -1 and loses
the number, but supervisord logs ``exited: NAME (terminated by SIGKILL; not
expected)`` in its own log. For a program seen ended that way, :meth:`~SupervisorControl.poll`
reads the last :data:`MAIN_LOG_TAIL` bytes of that log (``supervisor.readLog``) once
and takes the signal from the last such line for that program; when the line is not
there (the log rotated, or was removed) the signal is unknown (``None``).

supervisord runs with ``nodaemon`` in a session of its own, so it survives the
agent (``kill -9`` included) and is reattached to by the next agent. Unless an
executable is configured (``supdexe``) it is the ``supervisord`` of the agent's own
Python installation, run in UTF-8 mode so that non-ASCII arguments survive, through
:mod:`eeagent.supdrun` so that a full disk drops output instead of killing it.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import hashlib
import http.client
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

from supervisor.xmlrpc import SupervisorTransport

from eeagent.cgroups import Cgroups
from eeagent.control import Attachment, LogStream, ProgramSpec, ProgramState, ProgramStatus
from eeagent.errors import (
    BackendFaultError,
    BackendStartError,
    BackendUnavailableError,
    SpawnError,
    StartCancelledError,
)
from eeagent.reaper import Reaper
from eeagent.supdconf import (
    LOG_BACKUPS,
    STOP_WAIT_SECONDS,
    SupervisordFiles,
    program_options,
    render_config,
)
from pdcommon import procfs

__all__ = ["MAIN_LOG_TAIL", "SupervisorControl", "socket_path_for", "stop_left_supervisord"]

log = logging.getLogger(__name__)

#: Longest socket path used in place: sun_path is 108 bytes including the NUL, and
#: supervisord binds ``<path>.<pid>`` first.
MAX_SOCKET_PATH = 96
#: Seconds one XML-RPC request may take before supervisord counts as hung.
RPC_TIMEOUT = 10.0
#: Seconds a new supervisord has to start answering.
START_TIMEOUT = 30.0
#: Longest wait for a just-spawned child to exec before it is sent a stop: a
#: signal that lands between fork and exec is lost (measured: up to 170 ms under load).
EXEC_WAIT = 0.5

_FAULT_NAMES = {
    1: "UNKNOWN_METHOD",
    2: "INCORRECT_PARAMETERS",
    3: "BAD_ARGUMENTS",
    6: "SHUTDOWN_STATE",
    10: "BAD_NAME",
    11: "BAD_SIGNAL",
    20: "NO_FILE",
    21: "NOT_EXECUTABLE",
    30: "FAILED",
    40: "ABNORMAL_TERMINATION",
    50: "SPAWN_ERROR",
    60: "ALREADY_STARTED",
    70: "NOT_RUNNING",
    90: "ALREADY_ADDED",
    91: "STILL_RUNNING",
    92: "CANT_REREAD",
}
_BAD_NAME, _NOT_RUNNING, _ALREADY_ADDED, _SHUTDOWN_STATE = 10, 70, 90, 6
_SPAWN_ERROR = 50
_SPAWN_FAULTS = (20, 21, 30, 40, _SPAWN_ERROR)
#: What supervisord's forked child does when it cannot become the program (exec,
#: setuid or chdir failed): it writes ``supervisor: <reason>`` and then this line
#: to the program's stderr, and exits with this status.
_NOT_SPAWNED_STATUS = 127
_NOT_SPAWNED_LINE = b"supervisor: child process was not spawned\n"
_NOT_SPAWNED_TAIL = 4096
_STREAMS: tuple[LogStream, ...] = ("stdout", "stderr")
#: Bytes at the end of supervisord's own log searched for the line that says which
#: signal killed a program (it is written as the program ends: the poll that sees the
#: end reads it, so only a burst of other log lines in between could push it out).
MAIN_LOG_TAIL = 64 * 1024
#: A UTF-8 character is at most this many bytes: a tail that starts inside one
#: starts a character boundary at most this many bytes minus one later.
_UTF8_MAX = 4
#: The file that runs supervisord with its output kept off the last free space.
_SUPDRUN = str(Path(__file__).with_name("supdrun.py"))


def socket_path_for(home: Path) -> Path:
    """The unix socket of the supervisord living in ``home`` (see the module docstring)."""
    inside = home / "supd.sock"
    if len(os.fsencode(inside)) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
    return Path("/tmp") / f"pd-eeagent-{os.getuid()}" / f"{digest}.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Transport(SupervisorTransport):  # type: ignore[misc]
    """supervisord's transport, with a timeout on the unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(None, None, f"unix://{path}")
        self._get_connection = lambda: _UnixConnection(path, timeout)


class SupervisorControl:
    """:class:`~eeagent.control.ProcessControl` over a private supervisord.

    Args:
        home: the agent's directory (created, mode 0700).
        supdexe: the supervisord executable; ``None`` runs the one installed with
            this Python, through :mod:`eeagent.supdrun` (``python -X utf8 -P
            .../eeagent/supdrun.py``), which keeps it alive on a full disk.
        environ: the environment supervisord (and so every program) starts with;
            ``None`` inherits the agent's.
        rpc_timeout: seconds one XML-RPC request may take.
        start_timeout: seconds a new supervisord has to start answering.
        stop_wait: seconds between SIGTERM and SIGKILL, for a program's process
            group (supervisord's ``stopwaitsecs``) and for the processes it
            started outside that group.
        stopping: once set (the agent is asked to stop), a supervisord that is
            still starting is not waited for: it is killed and :meth:`open`
            raises :class:`~eeagent.errors.StartCancelledError`.
    """

    def __init__(
        self,
        home: Path,
        *,
        supdexe: Path | None = None,
        environ: Mapping[str, str] | None = None,
        rpc_timeout: float = RPC_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
        stop_wait: int = STOP_WAIT_SECONDS,
        stopping: threading.Event | None = None,
    ) -> None:
        self.home = Path(home).absolute()
        self.stopping = stopping
        self.supdexe = supdexe
        self.environ = dict(environ) if environ is not None else None
        self.rpc_timeout = rpc_timeout
        self.start_timeout = start_timeout
        self.stop_wait = stop_wait
        self.logs = self.home / "logs"
        self.output = self.home / "supervisord.out"
        digest = hashlib.sha256(os.fsencode(self.home)).hexdigest()[:16]
        self.files = SupervisordFiles(
            config=str(self.home / "supervisord.conf"),
            socket=str(socket_path_for(self.home)),
            pidfile=str(self.home / "supd.pid"),
            logfile=str(self.home / "supd.log"),
            childlogdir=str(self.logs),
            identifier=f"pd-eeagent-{digest}",
        )
        self._programs: dict[str, dict[str, str]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._transport: _Transport | None = None
        self._pid = 0
        self._cmdline: bytes | None = None
        self._boot_id = procfs.read_boot_id()
        self._identities: dict[tuple[str, int], str | None] = {}
        self.reaper = Reaper(self.files.identifier, self._supervisord_pids, stop_wait)
        #: Programs seen ended since their last start (their leftovers were swept).
        self._ended: set[str] = set()
        #: The signal that killed a program, by (name, start time): looked up once.
        self._signals: dict[tuple[str, int], int | None] = {}

    # -- lifecycle ----------------------------------------------------------------

    def open(self) -> Attachment:
        """Reattach to this home's supervisord if it runs, else start one."""
        self._prepare_directories()
        try:
            pid = self._attach()
        except BackendUnavailableError:
            return self._start_fresh()
        self._adopt(pid)
        self._programs = self._read_programs()
        log.info("reattached to supervisord (pid %d) with %d programs", pid, len(self._programs))
        return Attachment(instance=str(pid), fresh=False)

    def recover(self) -> Attachment:
        """Start a new supervisord after the previous one died or hung."""
        self._kill_supervisord()
        return self._start_fresh()

    def close(self, *, stop_programs: bool) -> None:
        """Disconnect; with ``stop_programs``, shut supervisord down (its children with it)."""
        if stop_programs:
            try:
                # Stop them ourselves first: stop() waits for a fresh child to exec,
                # where supervisord's own shutdown signal could be lost.
                for name, status in self.poll().items():
                    if status.state in (ProgramState.STARTING, ProgramState.RUNNING):
                        self.stop(name)
                self._call("supervisor.shutdown")
            except BackendUnavailableError as exc:
                # Not answering (still starting, or hung): a request cannot reach it,
                # a signal can. On SIGTERM supervisord shuts down as on the request.
                log.warning("supervisord shutdown request failed: %s; sending SIGTERM", exc)
                self._signal_supervisord(signal.SIGTERM)
            except BackendFaultError as exc:
                log.warning("supervisord shutdown request failed: %s", exc)
            pid = self._pid or self._pidfile_pid()
            deadline = time.monotonic() + STOP_WAIT_SECONDS + 5
            while pid and procfs.pid_alive(pid) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            if pid and procfs.pid_alive(pid):
                log.warning("supervisord (pid %d) did not exit; killing it", pid)
                self._kill_supervisord()
            self._reap()
            self.reaper.finish({*self._programs, *self.reaper.names()})
            self.reaper.close(self.files.identifier)
        self._disconnect()

    # -- programs -----------------------------------------------------------------

    def start(self, spec: ProgramSpec) -> None:
        """Register ``spec`` as a program and spawn it (``startProcess`` without waiting)."""
        self._check_spawnable(spec)
        spec = dataclasses.replace(spec, env={**spec.env, **self.reaper.environment(spec.name)})
        stdout_log, stderr_log = (
            self._log_path(spec.name, "stdout"),
            self._log_path(spec.name, "stderr"),
        )
        try:
            options = program_options(spec, str(stdout_log), str(stderr_log), self.stop_wait)
        except ValueError as exc:
            raise SpawnError(str(exc)) from exc
        if spec.name in self._programs:
            self.remove(spec.name)
        if self.reaper.pending(spec.name):  # leftovers of an earlier run of this name
            self.reaper.kill([spec.name])
        self._ended.discard(spec.name)
        self._remove_logs(spec.name)
        self._programs[spec.name] = options
        self._write_config()
        try:
            self._call("supervisor.reloadConfig")
            self._call("supervisor.addProcessGroup", spec.name)
        except BackendFaultError as exc:
            if exc.code != _ALREADY_ADDED:
                del self._programs[spec.name]
                self._write_config()
                raise SpawnError(f"supervisord refused the program: {exc.fault}") from exc
        try:
            with self.reaper.spawning(spec.name, self._pid):
                self._call("supervisor.startProcess", spec.name, False)
        except BackendFaultError as exc:
            if exc.code not in _SPAWN_FAULTS:
                raise
            info = self._process_info(spec.name)
            if exc.code == _SPAWN_ERROR and info.get("statename") == "EXITED":
                # supervisord reaped the child before replying (it exits fast) and
                # calls its exit code a spawn error: it was spawned; how it ended
                # (including a failed exec) is what poll() reports.
                return
            raise SpawnError(_spawn_message(exc, str(info.get("spawnerr") or ""))) from exc

    def stop(self, name: str) -> bool:
        """Send the stop signal, after waiting (briefly) for a fresh child to exec.

        Everything the program started outside its process group is sent SIGTERM
        too (see :mod:`eeagent.reaper`), even when the program itself has ended.
        """
        try:
            info = self._call("supervisor.getProcessInfo", name)
        except BackendFaultError as exc:
            if exc.code == _BAD_NAME:
                return False
            raise
        pid = 0
        if info.get("statename") in ("STARTING", "RUNNING") and info.get("pid"):
            pid = int(info["pid"])
            self._wait_exec(pid)
        # Looked for first: once the main process dies, its children are orphans.
        found = self.reaper.find([name], pid) if pid else None
        try:
            self._call("supervisor.stopProcess", name, False)
        except BackendFaultError as exc:
            if exc.code in (_BAD_NAME, _NOT_RUNNING):
                self.reaper.terminate(name)
                return False
            raise
        # supervisord has just sent SIGTERM to the group (stopasgroup): not twice.
        self.reaper.terminate(name, found=found, signalled_group=pid)
        return True

    def resignal(self, name: str) -> None:
        """Send SIGTERM again to a program that is still stopping."""
        try:
            self._call("supervisor.signalProcess", name, "TERM")
        except BackendFaultError as exc:
            if exc.code not in (_BAD_NAME, _NOT_RUNNING):
                raise

    def remove(self, name: str) -> None:
        """Remove a stopped program from supervisord and its configuration; delete its logs.

        What it left running gets SIGTERM (unless that was done when it ended), and
        SIGKILL after the stop wait.
        """
        if name not in self._ended:
            self.reaper.terminate(name)
        self._ended.discard(name)
        self.reaper.release(name)
        try:
            self._call("supervisor.removeProcessGroup", name)
        except BackendFaultError as exc:
            if exc.code != _BAD_NAME:
                raise
        # Logs first: on a full disk, they free the space the configuration needs.
        self._remove_logs(name)
        if self._programs.pop(name, None) is not None:
            self._write_config()

    def poll(self) -> dict[str, ProgramStatus]:
        """``getAllProcessInfo``, as :class:`ProgramStatus` values by program name."""
        infos = self._call("supervisor.getAllProcessInfo")
        result: dict[str, ProgramStatus] = {}
        live: set[tuple[str, int]] = set()
        killed: set[tuple[str, int]] = set()
        for info in infos:
            status = self._status(info)
            result[status.name] = status
            if status.pid:
                live.add((status.name, status.pid))
            if status.state is ProgramState.EXITED and status.exit_status == -1:
                killed.add(_signal_key(info))
        for key in set(self._identities) - live:
            del self._identities[key]
        for key in set(self._signals) - killed:
            del self._signals[key]
        self._sweep_ended(result)
        return result

    def _sweep_ended(self, statuses: Mapping[str, ProgramStatus]) -> None:
        """SIGTERM what programs that just ended left running; SIGKILL what is overdue."""
        for name, status in statuses.items():
            ended = status.state in (ProgramState.STOPPED, ProgramState.EXITED)
            if ended and status.started and name not in self._ended:
                self._ended.add(name)
                self.reaper.terminate(name)
        self._ended &= set(statuses)
        self.reaper.collect()

    def read_log(self, name: str, stream: LogStream, tail_bytes: int) -> bytes:
        """The last ``tail_bytes`` of a program's captured ``stream`` (rotated file included)."""
        path = self._log_path(name, stream)
        data = procfs.tail(path, tail_bytes)
        if len(data) < tail_bytes:
            older = procfs.tail(path.with_name(path.name + ".1"), tail_bytes - len(data))
            data = older + data
        return data

    def log_size(self, name: str) -> int:
        """Bytes of a program's log files (both streams, rotated files included)."""
        total = 0
        for path in self._log_files(name):
            with contextlib.suppress(FileNotFoundError):
                total += path.lstat().st_size
        return total

    def drop_logs(self, name: str) -> None:
        """Delete a program's log files, leaving the program registered.

        supervisord closes an exited program's log files when it reaps it (its
        output dispatchers are dropped); each file is emptied before it is unlinked
        all the same, so that the space is freed even if a handle is still open.
        """
        self._remove_logs(name)

    def kill_stray(self, processes: Iterable[tuple[int, str | None]]) -> list[int]:
        """SIGKILL the process groups of leftover children whose identity still matches.

        Everything the programs of the dead supervisord started is killed first,
        while the main processes still hold their children that cleared the marker.
        """
        killed = self._kill_orphans()
        for pid, identity in processes:
            if not pid or identity is None or procfs.identity(pid, self._boot_id) != identity:
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            except PermissionError:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return killed

    # -- XML-RPC ------------------------------------------------------------------

    def _call(self, method: str, *args: Any) -> Any:
        if self._transport is None:
            self._transport = _Transport(self.files.socket, self.rpc_timeout)
        proxy = xmlrpc.client.ServerProxy("http://localhost", transport=self._transport)
        try:
            return getattr(proxy, method)(*args)
        except xmlrpc.client.Fault as exc:
            name = _FAULT_NAMES.get(exc.faultCode, "UNKNOWN")
            raise BackendFaultError(
                f"supervisord {method}: {exc.faultString}",
                code=exc.faultCode,
                fault=exc.faultString or name,
            ) from exc
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
            self._disconnect()
            raise BackendUnavailableError(
                f"supervisord at {self.files.socket} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        except (xmlrpc.client.ResponseError, ExpatError, ValueError) as exc:
            self._disconnect()
            raise BackendUnavailableError(
                f"supervisord {method}: unreadable reply ({exc})"
            ) from exc

    def _disconnect(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
            self._transport = None

    # -- starting and attaching ---------------------------------------------------

    def _prepare_directories(self) -> None:
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.logs.mkdir(mode=0o700, exist_ok=True)
            socket_dir = Path(self.files.socket).parent
            if socket_dir != self.home:
                socket_dir.mkdir(mode=0o700, exist_ok=True)
                st = socket_dir.lstat()
                if st.st_uid != os.getuid() or not socket_dir.is_dir() or socket_dir.is_symlink():
                    raise BackendStartError(f"{socket_dir} is not a private directory of this user")
        except OSError as exc:
            raise BackendStartError(f"cannot create {self.home}: {exc.strerror}") from exc

    def _attach(self) -> int:
        identification = self._call("supervisor.getIdentification")
        if identification != self.files.identifier:
            raise BackendStartError(
                f"{self.files.socket} is served by another supervisord ({identification!r})"
            )
        state = self._call("supervisor.getState")
        if state.get("statename") != "RUNNING":
            raise BackendUnavailableError(f"supervisord is {state.get('statename')}")
        self._pid = int(self._call("supervisor.getPID"))
        self._cmdline = procfs.read_cmdline(self._pid)
        return self._pid

    def _command(self) -> list[str]:
        if self.supdexe is not None:
            return [str(self.supdexe), "-c", self.files.config]
        # Run by path (``-P``: its directory is not put on sys.path), so that it
        # imports supervisor only, not the agent.
        return [sys.executable, "-X", "utf8", "-P", _SUPDRUN, "-c", self.files.config]

    def _start_fresh(self) -> Attachment:
        self._disconnect()
        self._kill_orphans()
        self._ended.clear()
        self._programs = {}
        self._write_config()
        command = self._command()
        try:
            with open(self.output, "ab") as output:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self.environ,
                    cwd=self.home,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise BackendStartError(f"cannot run {command[0]}: {exc.strerror}") from exc
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                pid = self._attach()
                break
            except BackendUnavailableError:
                if self.stopping is not None and self.stopping.is_set():
                    self._cancel_start()
                    raise StartCancelledError(
                        "the agent is stopping: the supervisord still starting was killed"
                    ) from None
                if self._proc.poll() is not None:
                    raise BackendStartError(
                        f"supervisord exited with status {self._proc.returncode}: "
                        f"{_last_line(self.output)}"
                    ) from None
                if time.monotonic() > deadline:
                    self._kill_supervisord()
                    raise BackendStartError(
                        f"supervisord did not answer on {self.files.socket} "
                        f"within {self.start_timeout:g}s"
                    ) from None
                time.sleep(0.01)
        self._adopt(pid)
        log.info("started supervisord (pid %d) in %s", pid, self.home)
        return Attachment(instance=str(pid), fresh=True)

    def _cancel_start(self) -> None:
        """Kill the supervisord started by :meth:`_start_fresh` that does not answer yet
        (it has no programs): our child, and whatever its pid file names."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()
        self._kill_supervisord()

    def _kill_supervisord(self) -> None:
        """SIGKILL our supervisord if it still exists (it is dead or hung)."""
        self._disconnect()
        self._signal_supervisord(signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self._reap()

    def _signal_supervisord(self, sig: int) -> None:
        """Send ``sig`` to our supervisord (known pid or pid file) if it still runs
        with this home's configuration."""
        config = os.fsencode(self.files.config)
        for pid in {self._pid, self._pidfile_pid()}:
            if pid and config in (procfs.read_cmdline(pid) or b""):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)

    def _adopt(self, supervisord: int) -> None:
        """Put a running supervisord into its cgroup (set up at the first call)."""
        if self.reaper.cgroups is None:
            self.reaper.cgroups = Cgroups.discover(self.files.identifier)
        self.reaper.adopt(supervisord)

    def _kill_orphans(self) -> list[int]:
        """Kill what the programs of a supervisord that is gone left running."""
        return self.reaper.kill({*self._programs, *self._read_programs(), *self.reaper.names()})

    def _supervisord_pids(self) -> set[int]:
        return {pid for pid in (self._pid, self._pidfile_pid()) if pid}

    def _pidfile_pid(self) -> int:
        try:
            return int(Path(self.files.pidfile).read_text().strip())
        except (OSError, ValueError):
            return 0

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    # -- configuration and files --------------------------------------------------

    def _read_programs(self) -> dict[str, dict[str, str]]:
        parser = configparser.RawConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read(self.files.config, encoding="utf-8")
        except configparser.Error as exc:
            log.warning(
                "cannot read %s (%s); programs will be re-registered", self.files.config, exc
            )
            return {}
        return {
            section.split(":", 1)[1]: dict(parser.items(section))
            for section in parser.sections()
            if section.startswith("program:")
        }

    def _write_config(self) -> None:
        try:
            text = render_config(self.files, self._programs)
        except ValueError as exc:
            raise BackendStartError(str(exc)) from exc
        path = Path(self.files.config)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise BackendStartError(f"cannot write {path}: {exc.strerror}") from exc

    def _log_path(self, name: str, stream: LogStream) -> Path:
        return self.logs / f"{name}.{stream}"

    def _log_files(self, name: str) -> list[Path]:
        """Every file a program's output may be in: both streams and their rotations."""
        files = []
        for stream in _STREAMS:
            path = self._log_path(name, stream)
            files.append(path)
            files += [path.with_name(f"{path.name}.{n}") for n in range(1, LOG_BACKUPS + 1)]
        return files

    def _remove_logs(self, name: str) -> None:
        """Delete a program's log files, emptying each first: supervisord may still
        hold one open (a deleted file's space is freed only once it is closed)."""
        for path in self._log_files(name):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError:
                pass  # e.g. a symlink someone put there: deleting it is enough
            else:
                try:
                    os.ftruncate(fd, 0)
                finally:
                    os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _check_spawnable(self, spec: ProgramSpec) -> None:
        directory = spec.working_directory
        if directory is not None and not os.path.isdir(directory):
            raise SpawnError(f"cannot start: working directory {directory!r} does not exist")
        if spec.user is not None:
            try:
                entry = pwd.getpwnam(spec.user)
            except KeyError:
                raise SpawnError(f"cannot start: user {spec.user!r} does not exist") from None
            if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
                raise SpawnError(
                    f"cannot start: cannot run as user {spec.user!r}: the agent is not root"
                )

    def _process_info(self, name: str) -> dict[str, Any]:
        """``getProcessInfo``, or an empty dict when it cannot be had."""
        try:
            info = self._call("supervisor.getProcessInfo", name)
        except (BackendFaultError, BackendUnavailableError):
            return {}
        return dict(info)

    def _not_spawned_reason(self, name: str) -> str | None:
        """Why supervisord's child could not become the program, if that is how it ended.

        Read from the end of the program's stderr, where the child wrote it before
        exiting with status 127 (see :data:`_NOT_SPAWNED_LINE`); ``None`` when the
        program itself ran (and exited with 127 on its own).
        """
        tail = self.read_log(name, "stderr", _NOT_SPAWNED_TAIL)
        if not tail.endswith(_NOT_SPAWNED_LINE):
            return None
        lines = tail[: -len(_NOT_SPAWNED_LINE)].splitlines()
        reason = lines[-1].decode("utf-8", "replace") if lines else ""
        return reason.removeprefix("supervisor: ") or "the program could not be executed"

    def _wait_exec(self, pid: int) -> None:
        if self._cmdline is None:
            return
        deadline = time.monotonic() + EXEC_WAIT
        while time.monotonic() < deadline:
            if procfs.read_cmdline(pid) != self._cmdline:
                return
            time.sleep(0.001)
        log.warning("pid %d has not exec'd after %.1fs; stopping it anyway", pid, EXEC_WAIT)

    def _status(self, info: dict[str, Any]) -> ProgramStatus:
        name = str(info["name"])
        try:
            state = ProgramState(info.get("statename"))
        except ValueError:
            state = ProgramState.UNKNOWN
        pid = int(info.get("pid") or 0)
        identity = None
        if pid:
            key = (name, pid)
            if key not in self._identities:
                self._identities[key] = procfs.identity(pid, self._boot_id)
            identity = self._identities[key]
        started = bool(info.get("start"))
        exit_status = int(info.get("exitstatus", 0)) if state is ProgramState.EXITED else None
        spawn_error = str(info.get("spawnerr") or "")
        if exit_status == _NOT_SPAWNED_STATUS:
            reason = self._not_spawned_reason(name)
            if reason is not None:  # the program never ran: it could not be started
                state, exit_status, spawn_error = ProgramState.FATAL, None, reason
        killed_by = None
        if exit_status == -1:
            key = _signal_key(info)
            if key not in self._signals:
                self._signals[key] = self._signal_from_log(name)
            killed_by = self._signals[key]
        return ProgramStatus(
            name=name,
            state=state,
            pid=pid,
            exit_status=exit_status,
            spawn_error=spawn_error,
            started=started,
            identity=identity,
            signal=killed_by,
        )

    def _signal_from_log(self, name: str) -> int | None:
        """The signal that killed ``name``, from the last line supervisord logged for it.

        ``None`` when its log cannot be read or no longer holds the line.
        """
        tail = self._main_log_tail()
        if tail is None:
            return None
        pattern = re.compile(
            rf"exited: {re.escape(name)} \(terminated by (?:(SIG[A-Z0-9]+)|signal (\d+))"
        )
        matches = list(pattern.finditer(tail))
        if not matches:
            log.info("supervisord's log does not say which signal killed %s", name)
            return None
        found = matches[-1]
        if found.group(2) is not None:
            return int(found.group(2))
        number = getattr(signal, found.group(1), None)
        return int(number) if isinstance(number, int) else None

    def _main_log_tail(self) -> str | None:
        """The last :data:`MAIN_LOG_TAIL` bytes of supervisord's own log (``readLog``).

        supervisord decodes what it read as UTF-8 and fails the call (an HTTP 500)
        when the tail starts inside a character, so a failed read starts up to
        ``_UTF8_MAX - 1`` bytes later. ``None`` when the log cannot be read.
        """
        for skip in range(_UTF8_MAX):
            try:
                return str(self._call("supervisor.readLog", -(MAIN_LOG_TAIL - skip), 0))
            except BackendFaultError as exc:  # NO_FILE: not there (yet, or any more)
                log.info("cannot read supervisord's log: %s", exc)
                return None
            except BackendUnavailableError as exc:
                log.debug("reading supervisord's log failed (%s)", exc)
        return None


def _signal_key(info: Mapping[str, Any]) -> tuple[str, int]:
    """Identifies one run of a program: its name and start time."""
    return str(info["name"]), int(info.get("start") or 0)


def stop_left_supervisord(home: Path) -> None:
    """Shut down the supervisord an agent left in ``home`` (its programs with it).

    Nothing happens when ``home`` has no pid file or its process is gone. The
    ``local`` provisioner driver calls it (injected) for every agent of a node it
    destroys, after the agents themselves stopped.
    """
    try:
        pid = int((home / "supd.pid").read_text().strip())
    except (OSError, ValueError):
        return
    if not procfs.pid_alive(pid):
        return
    log.info("shutting down the supervisord left in %s", home)
    SupervisorControl(home).close(stop_programs=True)


def _spawn_message(exc: BackendFaultError, spawn_error: str) -> str:
    text = exc.fault
    if spawn_error and spawn_error not in text:
        text = f"{text} ({spawn_error})"
    return f"cannot start: {text}"


def _last_line(path: Path) -> str:
    lines = procfs.tail(path, 4096).decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"
