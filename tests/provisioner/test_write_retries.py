"""The provisioner when a VM record keeps changing under every write.

An optimistic write gives up after ``WRITE_ATTEMPTS`` lost races
(:func:`dispatcher.store.modify.retry_conflicts`): the pass fails (the provisioner's
loop logs it and goes on), nothing of that change is stored, and the next sync
decides again from a fresh read.
"""

from __future__ import annotations

import pytest

from dashi.errors import WriteRetriesExhaustedError
from dispatcher.provisioner.base import VMState
from dispatcher.provisioner.fake import FakeDriver
from dispatcher.provisioner.manager import Provisioner
from dispatcher.registration import Registration
from dispatcher.store.modify import WRITE_ATTEMPTS
from tests.provisioner.conftest import register_agents
from tests.support.conflicts import ALWAYS, ConflictingStore


@pytest.fixture
def store() -> ConflictingStore:
    return ConflictingStore()


def test_a_vanished_node_whose_record_keeps_conflicting_is_failed_by_the_next_sync(
    provisioner: Provisioner,
    store: ConflictingStore,
    driver: FakeDriver,
    registration: Registration,
) -> None:
    # Given a running node of engine1
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    (node_id,) = driver.node_ids
    register_agents(registration, node_id)
    provisioner.step()
    assert store.get_vm(node_id).state == VMState.RUNNING  # type: ignore[union-attr]
    # And it vanishes from the cloud while its record changes under every write
    driver.vanish(node_id)
    store.conflicts[("vm", node_id)] = ALWAYS
    before = store.attempts[("vm", node_id)]
    # When the provisioner syncs, Then it gives up on that record
    with pytest.raises(WriteRetriesExhaustedError, match=f"vm '{node_id}'"):
        provisioner.sync()
    assert store.attempts[("vm", node_id)] - before == WRITE_ATTEMPTS
    # And nothing changed: still RUNNING, its node not evacuated
    assert store.get_vm(node_id).state == VMState.RUNNING  # type: ignore[union-attr]
    assert store.get_node(node_id) is not None
    # When the contention is over, Then the next sync fails it and evacuates its node
    store.conflicts.clear()
    provisioner.sync()
    assert store.get_vm(node_id).state == VMState.FAILED  # type: ignore[union-attr]
    assert store.get_node(node_id) is None
