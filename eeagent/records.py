"""What the agent knows about each process, as persisted and as reported.

A :class:`ProcessRecord` exists from the ``launch_process`` that created it until
the ``cleanup`` (or newer round) that removes it. Its ``state`` is one of the
legacy process state strings; heartbeats send it as ``[code, "NAME"]``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from pdcommon.states import ProcessState

__all__ = [
    "LIVE_STATES",
    "OUTPUT_TAIL",
    "TERMINAL_STATES",
    "ProcessRecord",
    "RememberedTerminate",
    "RetiringProgram",
    "wire_state",
]

#: States that hold a slot: the process may be running.
LIVE_STATES = (ProcessState.PENDING, ProcessState.RUNNING, ProcessState.TERMINATING)
#: States that change only through a new request (cleanup, newer round).
TERMINAL_STATES = (
    ProcessState.TERMINATED,
    ProcessState.EXITED,
    ProcessState.FAILED,
    ProcessState.REJECTED,
)


#: Bytes of each output stream an ended round reports.
OUTPUT_TAIL = 4096


def wire_state(state: str) -> list[int | str]:
    """``"500-RUNNING"`` as the legacy heartbeat sends it: ``[500, "RUNNING"]``."""
    code, name = state.split("-", 1)
    return [int(code), name]


class ProcessRecord(BaseModel):
    """One process (one upid at one round) held by the agent.

    Attributes:
        upid: the dispatcher's process id.
        round: the dispatcher's round for this launch.
        run_type: the requested run type (only ``supd`` runs).
        parameters: the launch parameters as received (kept for restarts).
        state: a legacy state string (``"500-RUNNING"``...).
        msg: why it failed or was rejected; ``None`` otherwise (sent as ``"None"``).
        exit_code: the exit code once it exited by itself (``None`` when a signal
            killed it).
        signal: the number of the signal that killed it, when one did and the
            backend knows which (a stop the agent sent does not count).
        program: the backend program name, once it was meant to reach the backend.
        needs_start: accepted but not yet handed to the backend.
        waiting_for: a program of an older round that must be gone before this one starts.
        stop_requested: ``terminate_process`` asked for it to stop.
        started_at: when the backend spawned it (epoch seconds).
        stop_sent_at: when its stop signal was sent (epoch seconds).
        resignaled: the stop signal was sent a second time (see ``EEAgent``).
        pid: the process id last seen (0 when none).
        identity: the backend's pid-reuse-proof identity of ``pid``.
        output: once the round ended, the last :data:`OUTPUT_TAIL` bytes of its
            ``stdout`` and ``stderr`` (as text), sent with the heartbeat so that the
            dispatcher keeps them after this agent forgets the round.
        ended_at: when the round entered a terminal state (epoch seconds); the
            log budget (:mod:`eeagent.logbudget`) counts its age from then.
        logs_dropped: its log files were deleted to keep the log budget;
            ``get_process_logs`` answers with ``output`` instead.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=False)

    upid: str
    round: int
    run_type: str
    parameters: Any = None
    state: str = ProcessState.PENDING
    msg: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    program: str | None = None
    needs_start: bool = False
    waiting_for: str | None = None
    stop_requested: bool = False
    started_at: float | None = None
    stop_sent_at: float | None = None
    resignaled: bool = False
    pid: int = 0
    identity: str | None = None
    output: dict[str, str] | None = None
    ended_at: float | None = None
    logs_dropped: bool = False

    @property
    def live(self) -> bool:
        """Whether it holds a slot (pending, running or terminating)."""
        return self.state in LIVE_STATES

    def report(self) -> dict[str, Any]:
        """The heartbeat entry: the legacy fields (``msg`` says why a round ended),
        and for an ended round the additive ``exit_code``, ``signal``, ``output`` and
        ``started_at`` (each when known)."""
        entry: dict[str, Any] = {
            "upid": self.upid,
            "round": str(self.round),
            "state": wire_state(self.state),
            "msg": str(self.msg),
        }
        if self.state in TERMINAL_STATES:
            if self.exit_code is not None and self.exit_code >= 0:
                entry["exit_code"] = self.exit_code
            if self.signal is not None:
                entry["signal"] = self.signal
            if self.output:
                entry["output"] = self.output
            if self.started_at is not None:
                entry["started_at"] = self.started_at
        return entry


class RetiringProgram(BaseModel):
    """A backend program that no record reports any more, to be stopped and removed.

    Attributes:
        name: the program name.
        started_at: when it was spawned, if known (epoch seconds).
        stop_sent_at: when its stop was sent, once it was.
        resignaled: the stop signal was sent a second time.
    """

    model_config = ConfigDict(extra="ignore")

    name: str
    started_at: float | None = None
    stop_sent_at: float | None = None
    resignaled: bool = False


class RememberedTerminate(BaseModel):
    """A ``terminate_process`` for a round the agent had not been launched with.

    Its launch (or restart) may still be on its way: when it arrives, it is refused
    and the process reported ``700-TERMINATED`` instead of started.

    Attributes:
        upid: the dispatcher's process id.
        round: the round the terminate named.
        at: when the terminate arrived (epoch seconds).
    """

    model_config = ConfigDict(extra="ignore")

    upid: str
    round: int
    at: float
