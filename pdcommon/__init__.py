"""What the dispatcher and the eeagent share beyond the wire protocol (:mod:`dashi`).

:mod:`pdcommon.errors` (the project's error root and the errors that never cross
the wire), :mod:`pdcommon.settings` (the typed configuration both daemons read),
:mod:`pdcommon.wire` (the :mod:`dashi` objects built from those settings),
:mod:`pdcommon.states` (process states and modes), :mod:`pdcommon.requests` (the
base of the validated request models), :mod:`pdcommon.heartbeat_messages` (the
heartbeat and its companions), :mod:`pdcommon.limits` (request size limits),
:mod:`pdcommon.procfs` (``/proc`` helpers), :mod:`pdcommon.signals` (signal
names) and :mod:`pdcommon.state_dir`.

It imports only :mod:`dashi` of the project; importing it loads nothing else.
"""
