"""Starting a command that a test will interrupt with SIGINT (Ctrl-C).

A command started from a terminal has SIGINT at its default disposition; Python
then turns it into ``KeyboardInterrupt``. A test run may not be started that
way: a non-interactive shell starts a background job (``pytest ... &``) with
SIGINT *ignored*, and an ignored signal stays ignored across ``fork`` and
``exec``. Every command the tests start would inherit it, and a Python command
would then never see Ctrl-C (CPython installs its SIGINT handler only when
SIGINT is not ignored at startup): ``pd-cli process logs --follow`` would
follow forever.

:func:`sigint_as_in_a_terminal` starts such a command as a terminal would. While
it runs, SIGINT in this process is handled rather than ignored; ``exec`` resets a
handled signal to its default in the child.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["sigint_as_in_a_terminal"]


@contextmanager
def sigint_as_in_a_terminal() -> Iterator[None]:
    """Processes started in the block get SIGINT at its default disposition, even
    when this test run ignores SIGINT. Must run in the main thread."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
