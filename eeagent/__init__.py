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

The package re-exports nothing: import each name from its module, so that
importing a record or state module (:mod:`eeagent.records`) loads neither kombu
nor the agent service.
"""
