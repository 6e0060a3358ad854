"""State and mode names, exactly as the legacy system spells them.

Process states order by plain string comparison: every prefix has three digits,
so ``"500-RUNNING" < "700-TERMINATED"`` and the core relies on it.
"""

from __future__ import annotations

__all__ = [
    "ExecutionResourceState",
    "InstanceState",
    "ProcessDispatcherState",
    "ProcessState",
    "QueueingMode",
    "RestartMode",
]


class ProcessState:
    UNSCHEDULED = "100-UNSCHEDULED"
    UNSCHEDULED_PENDING = "150-UNSCHEDULED_PENDING"
    REQUESTED = "200-REQUESTED"
    DIED_REQUESTED = "250-DIED_REQUESTED"
    WAITING = "300-WAITING"
    ASSIGNED = "350-ASSIGNED"
    PENDING = "400-PENDING"
    RUNNING = "500-RUNNING"
    TERMINATING = "600-TERMINATING"
    TERMINATED = "700-TERMINATED"
    EXITED = "800-EXITED"
    FAILED = "850-FAILED"
    REJECTED = "900-REJECTED"

    #: States that will not change without a request from outside.
    TERMINAL_STATES = (UNSCHEDULED, UNSCHEDULED_PENDING, TERMINATED, EXITED, FAILED, REJECTED)
    ALL = (
        UNSCHEDULED,
        UNSCHEDULED_PENDING,
        REQUESTED,
        DIED_REQUESTED,
        WAITING,
        ASSIGNED,
        PENDING,
        RUNNING,
        TERMINATING,
        TERMINATED,
        EXITED,
        FAILED,
        REJECTED,
    )


class ExecutionResourceState:
    OK = "OK"
    WARNING = "WARNING"
    MISSING = "MISSING"
    DISABLED = "DISABLED"


class InstanceState:
    """Node (VM) states used by ``node_state``."""

    REQUESTED = "200-REQUESTED"
    PENDING = "400-PENDING"
    STARTED = "500-STARTED"
    RUNNING = "600-RUNNING"
    TERMINATING = "700-TERMINATING"
    TERMINATED = "800-TERMINATED"
    FAILED = "900-FAILED"
    REJECTED = "950-REJECTED"

    #: States that mean the node is gone; FAILED and REJECTED count too, where the
    #: legacy dispatcher ignored them (docs/architecture.md, decision 3).
    DEAD = (TERMINATING, TERMINATED, FAILED, REJECTED)


class ProcessDispatcherState:
    UNINITIALIZED = "UNINITIALIZED"
    SYSTEM_BOOTING = "SYSTEM_BOOTING"
    OK = "OK"


class QueueingMode:
    NEVER = "NEVER"
    ALWAYS = "ALWAYS"
    START_ONLY = "START_ONLY"
    RESTART_ONLY = "RESTART_ONLY"
    ALL = (NEVER, ALWAYS, START_ONLY, RESTART_ONLY)


class RestartMode:
    NEVER = "NEVER"
    ALWAYS = "ALWAYS"
    ABNORMAL = "ABNORMAL"
    ALL = (NEVER, ALWAYS, ABNORMAL)
