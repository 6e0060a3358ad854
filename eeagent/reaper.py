"""Ending everything a program started, not only its process group.

supervisord signals a program's process group. A child that moved to a session or
group of its own (``setsid``, ``setpgid``), a daemon that double-forked, and the
background children of a program that exited by itself are outside that group (the
last two are not even descendants of anything supervisord knows any more), so they
would outlive a terminate or a cleanup.

So every program runs with a marker in its environment,
``EEAGENT_PROCESS_TOKEN=<token>``, which everything it starts inherits. The token
is 32 hex digits of ``sha256(<supervisord identifier> NUL <program name>)``: one per
program (``<upid>-<round>``) and agent home, and matched as a whole environment
entry, so another round, another upid with the same prefix, or another agent's
program never matches. A *sweep* of a program then finds, in one pass over
``/proc``, every process carrying its marker plus every descendant of those (and
of its main process while that runs), which also catches children that cleared
their environment while their parent is still around. Where the agent can create
cgroups (:mod:`eeagent.cgroups`), every member of the program's cgroup is taken
too, with its descendants: no process can leave that.

A sweep:

1. :meth:`Reaper.terminate`: SIGTERM to what it finds (on a stop, what it found
   just before supervisord signalled the process group, except that group, so no
   process gets SIGTERM twice);
2. once the stop wait has passed (:meth:`Reaper.collect`), or at once when it must
   be gone now (:meth:`Reaper.kill`): SIGSTOP to what it finds, looking again
   until nothing new appears (a stopped process cannot fork), then SIGKILL.

Never signalled: the agent and its ancestors, supervisord, pid 1, kernel threads;
and every signal goes through a pidfd after checking the process's start time, so
a pid reused since the scan is never hit.

Limits: without cgroups, a process that drops the marker (``env -i``, ``sudo``
with ``env_reset``, a program that overwrites its environment block to set its
title) and whose parent no longer carries it is not found. Pending sweeps live in
memory: the SIGKILL of a sweep due when the agent dies is not sent by the next
agent, which sweeps again (SIGTERM) the programs it finds exited.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

from eeagent.cgroups import Cgroups
from pdcommon import procfs

__all__ = ["KILL_ROUNDS", "MARKER", "Reaper"]

log = logging.getLogger(__name__)

#: The environment variable that marks a program's processes.
MARKER = "EEAGENT_PROCESS_TOKEN"
#: Most scans a stop-and-kill makes while new processes keep appearing.
KILL_ROUNDS = 20
#: Seconds between scans while :meth:`Reaper.finish` waits.
DRAIN_INTERVAL = 0.1
#: Longest wait in :meth:`Reaper.finish` for SIGKILLed processes to be gone (a
#: process in uninterruptible sleep dies only when that ends).
KILL_WAIT = 2.0


class Reaper:
    """Finds and ends the processes of programs, by their environment marker.

    Args:
        secret: mixed into the tokens (the supervisord identifier: unique per home).
        protected: returns pids that must never be signalled (supervisord's).
        stop_wait: seconds between a sweep's SIGTERM and its SIGKILL.
        clock: monotonic seconds (injectable for tests).

    Not thread-safe: the adapter calls it under the agent's lock.
    """

    def __init__(
        self,
        secret: str,
        protected: Callable[[], Collection[int]],
        stop_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secret = secret
        self.protected = protected
        self.stop_wait = stop_wait
        self.clock = clock
        self._due: dict[str, float] = {}
        self._signalled: dict[str, set[tuple[int, int]]] = {}
        #: The programs' cgroups, where the agent can create them.
        self.cgroups: Cgroups | None = None
        #: Programs whose cgroup is to be removed once empty.
        self._released: set[str] = set()

    def token(self, name: str) -> str:
        """The marker value of program ``name``."""
        return hashlib.sha256(f"{self.secret}\0{name}".encode()).hexdigest()[:32]

    def environment(self, name: str) -> dict[str, str]:
        """The variable to add to program ``name``'s environment."""
        return {MARKER: self.token(name)}

    def pending(self, name: str) -> bool:
        """Whether a sweep of ``name`` waits for its SIGKILL."""
        return name in self._due

    def find(self, names: Iterable[str], main: int = 0) -> dict[int, procfs.ProcessInfo]:
        """The live processes of programs ``names`` (and of main process ``main``)."""
        tokens = [self.token(name) for name in names]
        markers = [f"{MARKER}={token}".encode() for token in tokens]
        roots = self.cgroups.members(tokens) if self.cgroups is not None else set()
        if main:
            roots.add(main)
        exclude = procfs.ancestors(os.getpid()) | {pid for pid in self.protected() if pid}
        return procfs.find_marked(markers, roots=roots, exclude=exclude)

    @contextlib.contextmanager
    def spawning(self, name: str, supervisord: int) -> Iterator[None]:
        """Have what supervisord forks meanwhile born in program ``name``'s cgroup.

        Without cgroups, or when supervisord cannot be moved (logged), does nothing.
        """
        groups = self.cgroups
        entered = False
        if groups is not None and supervisord:
            try:
                groups.enter(self.token(name), supervisord)
                entered = True
            except OSError as exc:
                log.warning("cannot spawn %s in a cgroup of its own: %s", name, exc.strerror)
        try:
            yield
        finally:
            if entered:
                self.adopt(supervisord)

    def adopt(self, supervisord: int) -> None:
        """Put supervisord back into its own cgroup (logged if it cannot be)."""
        if self.cgroups is not None and supervisord:
            try:
                self.cgroups.adopt(supervisord)
            except OSError as exc:
                log.error("cannot move supervisord into its own cgroup: %s", exc.strerror)

    def release(self, name: str) -> None:
        """Remove ``name``'s cgroup once empty (now, or at a later :meth:`collect`)."""
        if self.cgroups is not None and not self.cgroups.release(self.token(name)):
            self._released.add(name)

    def close(self, identifier: str) -> None:
        """Remove the agent's empty cgroups (after every program has stopped).

        Args:
            identifier: the supervisord identifier, to find the cgroups of an agent
                that did not open them itself.
        """
        groups = self.cgroups or Cgroups.discover(identifier, create=False)
        if groups is not None:
            groups.close()

    def terminate(
        self,
        name: str,
        *,
        found: Mapping[int, procfs.ProcessInfo] | None = None,
        signalled_group: int = 0,
    ) -> int:
        """SIGTERM the processes of ``name``; their SIGKILL follows after the stop wait.

        A process already sent SIGTERM by an earlier call for the same sweep is not
        sent it again.

        Args:
            name: the program.
            found: what :meth:`find` returned for it just before supervisord was
                asked to stop it (the main process's children are found as its
                descendants only while it lives); ``None``: look now.
            signalled_group: a process group supervisord has just sent SIGTERM to
                (left out, but remembered as signalled).

        Returns:
            How many processes were sent SIGTERM.
        """
        if found is None:
            found = self.find([name])
        signalled = self._signalled.setdefault(name, set())
        sent = 0
        for pid, info in found.items():
            if (pid, info.start) in signalled:
                continue
            signalled.add((pid, info.start))
            if signalled_group and info.pgid == signalled_group:
                continue
            if procfs.signal_same(pid, info.start, signal.SIGTERM):
                sent += 1
        if sent:
            log.info("sent SIGTERM to %d process(es) that %s started", sent, name)
        # The process group is supervisord's to kill; what is left of it once the
        # main process has gone is found by the sweep made then.
        outside = [info for info in found.values() if info.pgid != signalled_group]
        if name not in self._due:
            if outside:
                self._due[name] = self.clock() + self.stop_wait
            elif not found:
                del self._signalled[name]
        return sent

    def collect(self) -> None:
        """Stop-and-kill what is left of sweeps whose stop wait has passed."""
        now = self.clock()
        overdue = [name for name, due in self._due.items() if now >= due]
        if overdue:
            self.kill(overdue)
        if self.cgroups is not None:
            for name in list(self._released):
                if name not in self._due and self.cgroups.release(self.token(name)):
                    self._released.discard(name)

    def kill(self, names: Iterable[str], wait: float = 0.0) -> list[int]:
        """SIGKILL every process of ``names`` now (stopping them all first).

        Args:
            names: the programs.
            wait: seconds to wait, at most, until the killed processes are gone.

        Returns:
            The pids killed.
        """
        names = list(names)
        for name in names:
            self._due.pop(name, None)
            self._signalled.pop(name, None)
        if not names:
            return []
        stopped: dict[int, int] = {}
        tried: set[int] = set()
        for _ in range(KILL_ROUNDS):
            fresh = {pid: info for pid, info in self.find(names).items() if pid not in tried}
            if not fresh:
                break
            for pid, info in fresh.items():
                tried.add(pid)
                if procfs.signal_same(pid, info.start, signal.SIGSTOP):
                    stopped[pid] = info.start
        killed = [
            pid for pid, start in stopped.items() if procfs.signal_same(pid, start, signal.SIGKILL)
        ]
        deadline = time.monotonic() + wait
        while any(procfs.same_alive(pid, stopped[pid]) for pid in killed):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        if killed:
            log.warning(
                "killed %d leftover process(es) of %s: %s", len(killed), ", ".join(names), killed
            )
        return killed

    def finish(self, names: Iterable[str]) -> list[int]:
        """Give the processes of ``names`` the rest of their stop wait, then kill the rest.

        Blocks (scanning every :data:`DRAIN_INTERVAL`) until none is left or the
        latest pending SIGKILL among ``names`` is due; for shutting down.

        Returns:
            The pids killed.
        """
        names = list(names)
        deadline = max((self._due.get(name, 0.0) for name in names), default=0.0)
        while self.clock() < deadline and self.find(names):
            time.sleep(DRAIN_INTERVAL)
        return self.kill(names, wait=KILL_WAIT)

    def names(self) -> list[str]:
        """The programs whose sweep waits for its SIGKILL."""
        return list(self._due)
