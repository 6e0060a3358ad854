"""The execution engine agent (``pd-eeagent``): runs processes under supervisord.

The agent receives ``launch_process``, ``terminate_process``, ``restart_process``,
``cleanup``, ``dump_state`` and ``get_process_logs`` from the dispatcher over the
dashi protocol, runs each process under a private supervisord, and reports every
process it holds in heartbeats to the dispatcher.

Layers, from the wire inwards: :mod:`eeagent.service` (RPC, monitor loop,
heartbeats), :mod:`eeagent.agent` (requests and the process state machine),
:mod:`eeagent.control` (the backend interface) with :mod:`eeagent.supervisor`
(supervisord) and :mod:`eeagent.fake` (in memory), :mod:`eeagent.persistence`
(the state file).
"""

from eeagent.agent import MAX_LOG_TAIL, RUN_TYPE, EEAgent
from eeagent.control import (
    Attachment,
    ProcessControl,
    ProgramSpec,
    ProgramState,
    ProgramStatus,
)
from eeagent.errors import (
    AgentLockedError,
    BackendFaultError,
    BackendStartError,
    BackendUnavailableError,
    EEAgentError,
    PersistenceError,
    ProcessControlError,
    SpawnError,
)
from eeagent.fake import FakeProcessControl
from eeagent.parameters import ParameterError, SupdParameters, parse_parameters, program_name
from eeagent.persistence import AgentLock, AgentSnapshot, StateStore
from eeagent.records import LIVE_STATES, TERMINAL_STATES, ProcessRecord, wire_state
from eeagent.service import POLL_INTERVAL, AgentService, Heartbeater, agent_home, run_agent
from eeagent.supervisor import SupervisorControl

__all__ = [
    "LIVE_STATES",
    "MAX_LOG_TAIL",
    "POLL_INTERVAL",
    "RUN_TYPE",
    "TERMINAL_STATES",
    "AgentLock",
    "AgentLockedError",
    "AgentService",
    "AgentSnapshot",
    "Attachment",
    "BackendFaultError",
    "BackendStartError",
    "BackendUnavailableError",
    "EEAgent",
    "EEAgentError",
    "FakeProcessControl",
    "Heartbeater",
    "ParameterError",
    "PersistenceError",
    "ProcessControl",
    "ProcessControlError",
    "ProcessRecord",
    "ProgramSpec",
    "ProgramState",
    "ProgramStatus",
    "SpawnError",
    "StateStore",
    "SupdParameters",
    "SupervisorControl",
    "agent_home",
    "parse_parameters",
    "program_name",
    "run_agent",
    "wire_state",
]
