"""Signal numbers as people read them: ``9`` is ``SIGKILL``.

The agent reports the number of the signal that killed a process (the ``signal``
key of its heartbeat entry, kept on the dispatcher's record and events); the
agent's reason and ``pd-cli`` name it with these helpers. Names are Linux's, as
Python's :mod:`signal` module spells them; a number with no name there (a real-time
signal such as 35) is shown as ``signal 35``.
"""

from __future__ import annotations

import signal

__all__ = ["signal_label", "signal_name"]


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal N`` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def signal_label(number: int) -> str:
    """``SIGKILL (9)``: the name with the number; just ``40`` for a number without a
    name (so that "killed by signal " + the label reads right either way)."""
    name = signal_name(number)
    return str(number) if name.startswith("signal ") else f"{name} ({number})"
