"""How a backend status moves a live process record (pure functions).

============  ==========================  ===========================================
backend       stop requested?             reported
============  ==========================  ===========================================
STARTING      -                           ``400-PENDING``
BACKOFF       -                           ``400-PENDING`` (FATAL follows: no retries)
RUNNING       no                          ``500-RUNNING``
RUNNING       yes                         unchanged; the stop is sent again
STOPPING      -                           ``600-TERMINATING``
STOPPED       yes, or it had started      ``700-TERMINATED`` (msg says who stopped it)
EXITED        yes                         ``700-TERMINATED``
EXITED 0      no                          ``800-EXITED``
EXITED n>0    no                          ``850-FAILED`` "exited with code n"
EXITED -1     no                          ``850-FAILED`` "killed by signal SIGKILL (9)"
                                          ("killed by a signal" when the backend
                                          does not know which)
FATAL         -                           ``850-FAILED`` "cannot start: <reason>" (never executed)
UNKNOWN       -                           unchanged (logged)
============  ==========================  ===========================================

A process killed by a signal has no exit code: its observation carries
``exit_code=None`` and ``signal=N`` (``None`` when unknown). One the agent stopped
is ``700-TERMINATED`` however it died, so its signal (the agent's own) is not kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from eeagent.control import ProgramState, ProgramStatus
from eeagent.records import ProcessRecord
from pdcommon.signals import signal_label
from pdcommon.states import ProcessState

__all__ = ["RESIGNAL_AFTER", "STOP_RACE_WINDOW", "Observation", "observe", "resignal_due"]

#: A stop sent within this many seconds of the spawn may have been lost (a signal
#: that lands between fork and exec is) ...
STOP_RACE_WINDOW = 2.0
#: ... so if the process is still stopping this long after, the signal is sent again.
RESIGNAL_AFTER = 0.5


@dataclass(frozen=True)
class Observation:
    """What a backend status means for a record.

    Attributes:
        state: the state to report, or ``None`` to keep the current one.
        msg: the message that goes with it.
        exit_code: the exit code, when the process exited by itself.
        signal: the signal that killed the process, when it was killed by one and
            the backend knows which.
        resend_stop: a requested stop did not take: send it again.
        stopping: the process is stopping: check whether the stop was lost.
    """

    state: str | None
    msg: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    resend_stop: bool = False
    stopping: bool = False


def observe(record: ProcessRecord, status: ProgramStatus) -> Observation:
    """Map ``status`` to the record's next reported state (see the module table)."""
    state = status.state
    if state in (ProgramState.STARTING, ProgramState.BACKOFF):
        return Observation(ProcessState.PENDING)
    if state is ProgramState.RUNNING:
        if record.stop_requested:
            return Observation(None, resend_stop=True)
        return Observation(ProcessState.RUNNING)
    if state is ProgramState.STOPPING:
        return Observation(ProcessState.TERMINATING, stopping=True)
    if state is ProgramState.STOPPED:
        if record.stop_requested:
            return Observation(ProcessState.TERMINATED)
        if status.started:
            return Observation(ProcessState.TERMINATED, "stopped outside the agent")
        return Observation(None)
    if state is ProgramState.EXITED:
        code = status.exit_status if status.exit_status is not None else -1
        if record.stop_requested:
            return Observation(ProcessState.TERMINATED, exit_code=code if code >= 0 else None)
        if code == 0:
            return Observation(ProcessState.EXITED, exit_code=0)
        if code < 0:
            if status.signal is None:
                return Observation(ProcessState.FAILED, "killed by a signal")
            return Observation(
                ProcessState.FAILED,
                f"killed by signal {signal_label(status.signal)}",
                signal=status.signal,
            )
        return Observation(ProcessState.FAILED, f"exited with code {code}", exit_code=code)
    if state is ProgramState.FATAL:
        reason = status.spawn_error or "supervisord could not start it"
        return Observation(ProcessState.FAILED, f"cannot start: {reason}")
    return Observation(None)


def resignal_due(
    *, stop_sent_at: float | None, started_at: float | None, resignaled: bool, now: float
) -> bool:
    """Whether a still-stopping process should get its stop signal once more.

    Only a stop sent within :data:`STOP_RACE_WINDOW` of the spawn can have been
    lost, and the signal is repeated once, :data:`RESIGNAL_AFTER` after the first;
    a process that is merely slow to shut down is left to supervisord's timeout.
    """
    if resignaled or stop_sent_at is None or now - stop_sent_at < RESIGNAL_AFTER:
        return False
    return started_at is None or stop_sent_at - started_at <= STOP_RACE_WINDOW
