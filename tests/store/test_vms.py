"""The Store contract for VM records (nodes the provisioner launched), on every backend."""

from __future__ import annotations

import dataclasses

import pytest

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.model import VM
from dispatcher.store.base import Store
from tests.store.conftest import StoreFactory


def make_vm(node_id: str = "pd-e1-0001", **changes: object) -> VM:
    vm = VM(
        node_id=node_id,
        engine_id="e1",
        site="default",
        state="pending",
        provider_id="i-0123",
        properties={"hostname": "vm1", "addresses": ["10.0.0.1"]},
        last_error="RequestLimitExceeded: slow down",
        attempts=2,
        next_attempt=12.5,
        requested_at=10.0,
        state_time=11.0,
    )
    return dataclasses.replace(vm, **changes)  # type: ignore[arg-type]


def test_vm_add_sets_version_and_round_trips(store: Store) -> None:
    # Given a VM record, When added
    vm = make_vm()
    store.add_vm(vm)
    # Then its version is 1 and it reads back equal, as a copy
    assert vm.version == 1
    got = store.get_vm("pd-e1-0001")
    assert got == vm and got is not vm
    assert store.get_vm("missing") is None


def test_vm_json_properties_come_back_as_json(store: Store) -> None:
    store.add_vm(make_vm(properties={"pids": (1, 2), "n": {"k": 1}}))
    got = store.get_vm("pd-e1-0001")
    assert got is not None and got.properties == {"pids": [1, 2], "n": {"k": 1}}


def test_vm_add_existing_conflicts(store: Store) -> None:
    store.add_vm(make_vm())
    with pytest.raises(WriteConflictError):
        store.add_vm(make_vm())


def test_vm_update_is_versioned(store: Store) -> None:
    # Given a stored VM and a second, stale read of it
    vm = make_vm()
    store.add_vm(vm)
    stale = store.get_vm(vm.node_id)
    assert stale is not None
    # When the first copy moves to running
    vm.state = "running"
    vm.properties["pids"] = [42]
    store.update_vm(vm)
    # Then the version moved on and the stale copy can no longer be written
    assert vm.version == 2 and store.get_vm(vm.node_id) == vm
    stale.state = "terminating"
    with pytest.raises(WriteConflictError):
        store.update_vm(stale)


def test_vm_update_or_remove_missing_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.update_vm(make_vm(version=1))
    with pytest.raises(NotFoundError):
        store.remove_vm("pd-e1-0001")


def test_vms_list_by_node_id_and_remove(store: Store) -> None:
    # Given three VMs added out of order
    for node_id in ("n2", "n3", "n1"):
        store.add_vm(make_vm(node_id))
    # Then they list by node id, and a removed one is gone
    assert [vm.node_id for vm in store.list_vms()] == ["n1", "n2", "n3"]
    store.remove_vm("n2")
    assert [vm.node_id for vm in store.list_vms()] == ["n1", "n3"]
    assert store.get_vm("n2") is None


def test_vm_writes_notify_listeners_with_kind_vm(store: Store) -> None:
    calls: list[str] = []
    store.add_listener(calls.append)
    vm = make_vm()
    store.add_vm(vm)
    store.update_vm(vm)
    with pytest.raises(WriteConflictError):
        store.add_vm(make_vm())
    store.remove_vm(vm.node_id)
    assert calls == ["vm", "vm", "vm"]


def test_vms_are_shared_between_store_instances(store_factory: StoreFactory, backend: str) -> None:
    if backend == "memory":
        pytest.skip("the memory store is private to its process")
    # Given two dispatcher instances on one database
    first, second = store_factory(), store_factory()
    # When one writes a VM, Then the other reads it and a stale write of it conflicts
    vm = make_vm()
    first.add_vm(vm)
    seen = second.get_vm(vm.node_id)
    assert seen == vm
    vm.state = "running"
    first.update_vm(vm)
    assert seen is not None
    with pytest.raises(WriteConflictError):
        second.update_vm(seen)
