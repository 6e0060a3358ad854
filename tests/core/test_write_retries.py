"""RPC operations when a record keeps changing under every write.

The process write of an operation gives up after ``WRITE_ATTEMPTS`` lost races with
the legacy ``BadRequestError`` (see test_schedule and test_terminate_restart); a
write to another record after the process's is not the operation's failure.
"""

from __future__ import annotations

import logging

import pytest

from dispatcher.messaging import FiredMessage, RecordingMessenger
from dispatcher.store.modify import WRITE_ATTEMPTS
from pdcommon.states import ProcessState
from tests.core.conftest import put_process
from tests.support.conflicts import ALWAYS, ConflictingStore
from tests.support.wiring import make_core


def test_a_restart_whose_slot_move_keeps_conflicting_still_restarts_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given proc1 RUNNING on hats, whose resource record changes under every write
    store = ConflictingStore()
    messenger = RecordingMessenger()
    core = make_core(store, messenger)
    put_process(store, "proc1", ProcessState.RUNNING, assigned="hats")  # holds a slot
    store.conflicts[("resource", "hats")] = ALWAYS
    before = store.attempts[("resource", "hats")]
    # When it is restarted
    with caplog.at_level(logging.WARNING, logger="dispatcher.core"):
        result = core.restart_process("proc1")
    # Then the new round is stored and the agent told, though the slot move gave up
    # (logged: the agent's next heartbeat files the slot under the new round)
    assert (result["state"], result["round"]) == (ProcessState.PENDING, 1)
    assert messenger.messages == [
        FiredMessage("hats", "restart_process", {"u_pid": "proc1", "round": 1})
    ]
    assert store.attempts[("resource", "hats")] - before == WRITE_ATTEMPTS
    assert store.get_resource("hats").assigned == [("proc1", 0)]  # type: ignore[union-attr]
    assert "resource 'hats' kept changing" in caplog.text
