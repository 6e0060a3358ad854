"""The provisioner over a FakeDriver: scaling, retirement, retries, boot timeout, reconcile."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import pytest

from dispatcher.engines import EngineRegistry
from dispatcher.model import VM
from dispatcher.needs import NeedRegistrar, calculate_needs
from dispatcher.provisioner.base import VMState
from dispatcher.provisioner.errors import (
    CloudRequestError,
    ThrottledError,
    TransientCloudError,
)
from dispatcher.provisioner.fake import FakeDriver
from dispatcher.provisioner.manager import Provisioner
from dispatcher.provisioner.sites import Site
from dispatcher.provisioner.static import StaticDriver
from dispatcher.registration import Registration
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import ProvisionerSettings
from pdcommon.states import ExecutionResourceState
from tests.provisioner.conftest import BOOT_TIMEOUT, FakeClock, build, register_agents


def vms_in(store: MemoryStore, *states: str) -> list[VM]:
    return [vm for vm in store.list_vms() if vm.state in states]


def states(store: MemoryStore) -> dict[str, str]:
    return {vm.node_id: vm.state for vm in store.list_vms()}


def grow(provisioner: Provisioner, clock: FakeClock, engine_id: str, count: int) -> list[str]:
    """Create ``count`` nodes one second apart; return their ids, oldest first."""
    ids: list[str] = []
    for _ in range(count):
        provisioner.register_need(engine_id, len(ids) + 1, [])
        before = {vm.node_id for vm in provisioner.store.list_vms()}
        provisioner.step()
        (new,) = {vm.node_id for vm in provisioner.store.list_vms()} - before
        ids.append(new)
        clock.advance(1)
    return ids


class DeferredExecutor(Executor):
    """Holds submitted calls until :meth:`run_all` (calls in flight, for real)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.pending.append((fn, args, future))
        return future

    def run_all(self) -> None:
        calls, self.pending = self.pending, []
        for fn, args, future in calls:
            future.set_result(fn(*args))


# -- scale up -------------------------------------------------------------------------------


def test_a_need_creates_that_many_nodes_announced_with_the_engines_domain(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore
) -> None:
    # When engine1 needs 3 nodes
    provisioner.register_need("engine1", 3, [])
    provisioner.step()
    # Then 3 nodes are created, each pending, with a node record agents can register on
    assert driver.count("create") == 3
    assert sorted(states(store).values()) == [VMState.PENDING] * 3
    for request in driver.created:
        assert request.engine_id == "engine1"
        assert (request.slots, request.replicas) == (2, 1)
        node = store.get_node(request.node_id)
        assert node is not None and node.domain_id == "pd_domain_engine1"
        assert node.properties["hostname"] == f"{request.node_id}.fake"
    # And a second pass creates nothing more
    provisioner.step()
    assert driver.count("create") == 3


def test_replicas_and_slots_of_the_engine_reach_the_driver(
    provisioner: Provisioner, driver: FakeDriver
) -> None:
    provisioner.register_need("engine2", 1, [])
    provisioner.step()
    (request,) = driver.created
    assert (request.slots, request.replicas) == (1, 2)
    assert len(request.agent_names) == 2


def test_a_node_whose_agent_registers_becomes_running(
    provisioner: Provisioner, registration: Registration, store: MemoryStore
) -> None:
    provisioner.register_need("engine2", 2, [])
    provisioner.step()
    first, second = sorted(states(store))
    # When one agent of the first node sends its first heartbeat
    register_agents(registration, first, replicas=1)
    provisioner.step()
    # Then that node is running; the other is still pending
    assert states(store) == {first: VMState.RUNNING, second: VMState.PENDING}
    resource = store.get_resource(f"{first}-0")
    assert resource is not None and resource.properties["engine"] == "engine2"


def test_creates_in_flight_are_limited_to_max_parallel(
    store: MemoryStore,
    engines: EngineRegistry,
    driver: FakeDriver,
    registration: Registration,
    clock: FakeClock,
) -> None:
    executor = DeferredExecutor()
    settings = ProvisionerSettings(max_parallel=2)
    sites = {"default": Site("default", driver, BOOT_TIMEOUT)}
    provisioner = Provisioner(
        store, engines, sites, registration, settings=settings, executor=executor, clock=clock
    )
    provisioner.register_need("engine1", 5, [])
    provisioner.step()
    # Then 5 nodes are requested but only 2 creates are in flight
    assert len(vms_in(store, VMState.REQUESTED)) == 5
    assert len(executor.pending) == 2
    provisioner.step()
    assert len(executor.pending) == 2
    executor.run_all()
    provisioner.step()
    assert len(executor.pending) == 2
    assert len(vms_in(store, VMState.PENDING)) == 2


# -- scale down -----------------------------------------------------------------------------


def test_scale_down_destroys_the_retirable_nodes_newest_first(
    provisioner: Provisioner,
    driver: FakeDriver,
    registration: Registration,
    store: MemoryStore,
    clock: FakeClock,
) -> None:
    oldest, middle, newest = grow(provisioner, clock, "engine1", 3)
    for node_id in (oldest, middle, newest):
        register_agents(registration, node_id)
    provisioner.step()
    assert set(states(store).values()) == {VMState.RUNNING}
    # When the need drops to 1 with the two newest named retirable
    provisioner.register_need("engine1", 1, [newest, middle])
    provisioner.step()
    # Then they are destroyed, newest first, and their node records are gone
    assert [call for call in driver.calls if call[0] == "destroy"] == [
        ("destroy", newest),
        ("destroy", middle),
    ]
    assert states(store) == {
        oldest: VMState.RUNNING,
        middle: VMState.TERMINATED,
        newest: VMState.TERMINATED,
    }
    assert store.get_node(newest) is None and store.get_node(middle) is None
    assert store.get_resource(f"{newest}-0") is None
    assert driver.node_ids == [oldest]


def test_scale_down_prefers_pending_nodes_to_running_ones_that_are_not_named(
    provisioner: Provisioner,
    driver: FakeDriver,
    registration: Registration,
    store: MemoryStore,
    clock: FakeClock,
) -> None:
    running, pending_old, pending_new = grow(provisioner, clock, "engine1", 3)
    register_agents(registration, running)
    provisioner.step()
    # When the need drops to 1 and no node is named
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    # Then the pending nodes go, newest first; the running one stays
    destroyed = [node for op, node in driver.calls if op == "destroy"]
    assert destroyed == [pending_new, pending_old]
    assert states(store)[running] == VMState.RUNNING
    resource = store.get_resource(f"{running}-0")
    assert resource is not None and resource.state == ExecutionResourceState.OK


def hold_process(store: MemoryStore, node_id: str, upid: str) -> None:
    """Place ``upid`` on the first agent of ``node_id`` (as the matchmaker would)."""
    resource = store.get_resource(f"{node_id}-0")
    assert resource is not None
    resource.assigned = [(upid, 0)]
    store.update_resource(resource)


def test_idle_running_nodes_that_are_not_named_are_retired_and_busy_ones_never(
    provisioner: Provisioner,
    driver: FakeDriver,
    registration: Registration,
    store: MemoryStore,
    clock: FakeClock,
) -> None:
    # Given three running nodes (a new provisioner: nothing named), the oldest busy
    busy, older, newer = grow(provisioner, clock, "engine1", 3)
    for node_id in (busy, older, newer):
        register_agents(registration, node_id)
    provisioner.step()
    hold_process(store, busy, "p1")
    # When the need drops to 0 and no node is named retirable
    provisioner.register_need("engine1", 0, [])
    provisioner.step()
    # Then the idle ones are destroyed, newest first, their agents disabled first
    assert [node for op, node in driver.calls if op == "destroy"] == [newer, older]
    assert states(store) == {
        busy: VMState.RUNNING,
        older: VMState.TERMINATED,
        newer: VMState.TERMINATED,
    }
    # And the node holding a process stays, its agent still taking work
    provisioner.step()
    assert states(store)[busy] == VMState.RUNNING
    resource = store.get_resource(f"{busy}-0")
    assert resource is not None and resource.state == ExecutionResourceState.OK


def test_a_node_retired_by_an_earlier_term_goes_before_newer_idle_ones(
    provisioner: Provisioner,
    driver: FakeDriver,
    registration: Registration,
    store: MemoryStore,
    clock: FakeClock,
) -> None:
    # Given two idle running nodes; the older one's agent was disabled by a
    # previous leader whose provisioner never destroyed it
    retired, idle = grow(provisioner, clock, "engine1", 2)
    for node_id in (retired, idle):
        register_agents(registration, node_id)
    provisioner.step()
    resource = store.get_resource(f"{retired}-0")
    assert resource is not None
    resource.state = ExecutionResourceState.DISABLED
    store.update_resource(resource)
    # When the need is 1 and nothing is named
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    # Then the retired node goes, not the newer idle one
    assert [node for op, node in driver.calls if op == "destroy"] == [retired]
    assert states(store)[idle] == VMState.RUNNING


def test_a_node_not_created_yet_is_cancelled_without_a_destroy(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore
) -> None:
    driver.fail_next("create", TransientCloudError("timeout"))
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    (vm,) = store.list_vms()
    assert vm.state == VMState.REQUESTED
    provisioner.register_need("engine1", 0, [])
    provisioner.step()
    cancelled = store.get_vm(vm.node_id)
    assert cancelled is not None
    assert (cancelled.state, cancelled.reason) == (VMState.TERMINATED, "cancelled")
    assert driver.count("destroy") == 0
    assert store.get_node(vm.node_id) is None


# -- retries --------------------------------------------------------------------------------


def test_a_failing_create_is_retried_with_exponential_backoff(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore, clock: FakeClock
) -> None:
    driver.fail_next("create", TransientCloudError("connection reset"), times=4)
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    (vm,) = store.list_vms()
    delays = []
    for _ in range(4):
        vm = store.get_vm(vm.node_id)
        assert vm is not None and vm.state == VMState.REQUESTED
        assert vm.last_error == "TransientCloudError: connection reset"
        delay = vm.next_attempt - clock.now
        delays.append(delay)
        # Nothing is attempted before the backoff expires
        calls = driver.count("create")
        clock.advance(delay - 0.5)
        provisioner.step()
        assert driver.count("create") == calls
        clock.advance(0.5)
        provisioner.step()
        assert driver.count("create") == calls + 1
    # Then the delays doubled from retry_initial (2) up to retry_max (16)
    assert delays == [2, 4, 8, 16]
    done = store.get_vm(vm.node_id)
    assert done is not None and done.state == VMState.PENDING
    assert done.last_error == "TransientCloudError: connection reset"
    assert len(store.list_vms()) == 1


def test_backoff_stops_growing_at_retry_max(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore, clock: FakeClock
) -> None:
    driver.fail_next("create", TransientCloudError("busy"), times=7)
    provisioner.register_need("engine1", 1, [])
    for _ in range(7):
        provisioner.step()
        (vm,) = store.list_vms()
        clock.advance(vm.next_attempt - clock.now)
    (vm,) = store.list_vms()
    assert vm.attempts == 7
    provisioner.step()
    assert store.list_vms()[0].state == VMState.PENDING


def test_throttling_holds_every_call_to_the_site_for_retry_after(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore, clock: FakeClock
) -> None:
    driver.fail_next("create", ThrottledError("RequestLimitExceeded", retry_after=30))
    provisioner.register_need("engine1", 2, [])
    provisioner.step()
    # Then the second create was not even tried
    assert driver.count("create") == 1
    assert len(vms_in(store, VMState.REQUESTED)) == 2
    clock.advance(29)
    provisioner.step()
    assert driver.count("create") == 1
    clock.advance(1)
    provisioner.step()
    assert driver.count("create") == 3
    assert len(vms_in(store, VMState.PENDING)) == 2
    throttled = [vm for vm in store.list_vms() if vm.last_error]
    assert [vm.last_error for vm in throttled] == ["ThrottledError: RequestLimitExceeded"]


def test_a_throttled_destroy_is_retried(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore, clock: FakeClock
) -> None:
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    driver.fail_next("destroy", ThrottledError("slow down", retry_after=10))
    provisioner.register_need("engine1", 0, [])
    provisioner.step()
    (vm,) = store.list_vms()
    assert vm.state == VMState.TERMINATING and vm.attempts == 1
    clock.advance(10)
    provisioner.step()
    (vm,) = store.list_vms()
    assert vm.state == VMState.TERMINATED
    assert driver.node_ids == []


def test_a_fatal_create_error_fails_the_node_and_the_replacement_backs_off(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore, clock: FakeClock
) -> None:
    driver.fail_next("create", CloudRequestError("InvalidAMIID.NotFound: ami-x"))
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    (failed,) = vms_in(store, VMState.FAILED)
    assert failed.last_error == "CloudRequestError: InvalidAMIID.NotFound: ami-x"
    assert store.get_node(failed.node_id) is None
    provisioner.step()
    (replacement,) = vms_in(store, VMState.REQUESTED)
    assert replacement.next_attempt == clock.now + 2
    assert driver.count("create") == 1
    clock.advance(2)
    provisioner.step()
    assert vms_in(store, VMState.PENDING)[0].node_id == replacement.node_id


def test_dump_shows_needs_and_each_nodes_last_error(
    provisioner: Provisioner, driver: FakeDriver
) -> None:
    driver.fail_next("create", TransientCloudError("503 Service Unavailable"))
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    described = provisioner.describe()
    assert described["needs"] == {"engine1": 1}
    (vm,) = described["vms"]
    assert vm["state"] == "requested"
    assert vm["last_error"] == "TransientCloudError: 503 Service Unavailable"
    assert vm["attempts"] == 1


# -- boot timeout ---------------------------------------------------------------------------


def test_a_node_without_a_heartbeat_within_boot_timeout_is_destroyed_and_replaced(
    provisioner: Provisioner,
    driver: FakeDriver,
    registration: Registration,
    store: MemoryStore,
    clock: FakeClock,
) -> None:
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    (first,) = driver.node_ids
    clock.advance(BOOT_TIMEOUT)
    provisioner.step()
    assert states(store) == {first: VMState.PENDING}
    clock.advance(1)
    provisioner.step()
    # Then the silent node is destroyed (failed) and a new one is created
    old = store.get_vm(first)
    assert old is not None and old.state == VMState.FAILED
    assert old.reason is not None and "boot timeout" in old.reason
    assert ("destroy", first) in driver.calls
    (second,) = driver.node_ids
    assert second != first
    # And the replacement that registers in time stays
    register_agents(registration, second)
    clock.advance(BOOT_TIMEOUT + 1)
    provisioner.step()
    assert store.get_vm(second).state == VMState.RUNNING  # type: ignore[union-attr]


def test_a_running_node_declared_dead_is_destroyed_and_replaced(
    provisioner: Provisioner,
    driver: FakeDriver,
    registration: Registration,
    store: MemoryStore,
) -> None:
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    (first,) = driver.node_ids
    register_agents(registration, first)
    provisioner.step()
    # When the node is announced dead (node_state 900-FAILED)
    registration.node_dead(first, "900-FAILED")
    provisioner.step()
    assert store.get_vm(first).state == VMState.FAILED  # type: ignore[union-attr]
    (second,) = driver.node_ids
    assert second != first


# -- reconcile ------------------------------------------------------------------------------


def test_a_new_provisioner_adopts_running_nodes_and_forgets_vanished_ones(
    store: MemoryStore,
    engines: EngineRegistry,
    driver: FakeDriver,
    registration: Registration,
    clock: FakeClock,
    settings: ProvisionerSettings,
) -> None:
    first = build(store, engines, driver, registration, clock, settings)
    first.register_need("engine1", 3, [])
    first.step()
    kept, lost, silent = sorted(driver.node_ids)
    register_agents(registration, kept)
    first.step()
    # Given the dispatcher stops, one node vanishes meanwhile, and one exists
    # that no record knows (a create the old dispatcher never recorded)
    driver.vanish(lost)
    driver.add_existing("pd-engine1-orphan0001", "engine1")
    driver.add_existing("pd-gone-0000000001", "no-such-engine")
    # When a new provisioner starts over the same store and cloud
    second = build(store, engines, driver, registration, clock, settings)
    second.step()
    # Then the running node is kept, the vanished one failed, the unknown one adopted
    found = states(store)
    assert found[kept] == VMState.RUNNING
    assert found[silent] == VMState.PENDING
    assert found[lost] == VMState.FAILED
    assert found["pd-engine1-orphan0001"] == VMState.PENDING
    assert "pd-gone-0000000001" not in found
    adopted = store.get_vm("pd-engine1-orphan0001")
    assert adopted is not None and adopted.reason == "adopted"
    assert store.get_node("pd-engine1-orphan0001") is not None
    assert store.get_node(lost) is None
    # And with the need registered again, nothing is created: 3 live nodes exist
    second.register_need("engine1", 3, [])
    second.step()
    assert driver.count("create") == 3


def test_nodes_kept_from_before_a_restart_are_logged_once(
    store: MemoryStore,
    engines: EngineRegistry,
    driver: FakeDriver,
    registration: Registration,
    clock: FakeClock,
    settings: ProvisionerSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given nodes running with their agents under a first provisioner
    first = build(store, engines, driver, registration, clock, settings)
    first.register_need("engine1", 2, [])
    first.step()
    nodes = sorted(driver.node_ids)
    for node_id in nodes:
        register_agents(registration, node_id)
    first.step()
    # When a new provisioner (a restarted dispatcher) reconciles, twice
    second = build(store, engines, driver, registration, clock, settings)
    with caplog.at_level(logging.INFO, logger="dispatcher.provisioner.manager"):
        second.step()
        clock.advance(settings.sync_interval + 1)
        second.step()
    # Then it says once, at INFO, which nodes it kept
    kept = [r for r in caplog.records if "from before this start" in r.getMessage()]
    assert len(kept) == 1 and kept[0].levelno == logging.INFO
    assert ", ".join(nodes) in kept[0].getMessage()


def test_an_adopted_node_with_a_registered_agent_is_running(
    store: MemoryStore,
    engines: EngineRegistry,
    driver: FakeDriver,
    registration: Registration,
    clock: FakeClock,
    settings: ProvisionerSettings,
) -> None:
    driver.add_existing("pd-engine1-aaaaaaaaaa", "engine1")
    registration.node_running("pd-engine1-aaaaaaaaaa", "pd_domain_engine1", {})
    register_agents(registration, "pd-engine1-aaaaaaaaaa")
    provisioner = build(store, engines, driver, registration, clock, settings)
    provisioner.step()
    assert states(store) == {"pd-engine1-aaaaaaaaaa": VMState.RUNNING}


def test_a_node_whose_record_is_final_but_still_exists_is_destroyed(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore, clock: FakeClock
) -> None:
    store.add_vm(
        VM(
            node_id="pd-engine1-zombie0001",
            engine_id="engine1",
            site="default",
            state=VMState.TERMINATED,
            state_time=clock.now,
        )
    )
    driver.add_existing("pd-engine1-zombie0001", "engine1")
    provisioner.step()
    provisioner.step()
    assert driver.node_ids == []
    vm = store.get_vm("pd-engine1-zombie0001")
    assert vm is not None and vm.state == VMState.TERMINATED


def test_a_failed_listing_is_retried_on_the_next_pass(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore
) -> None:
    driver.add_existing("pd-engine1-bbbbbbbbbb", "engine1")
    driver.fail_next("list", TransientCloudError("timeout"))
    provisioner.step()
    assert store.list_vms() == []
    provisioner.step()
    assert states(store) == {"pd-engine1-bbbbbbbbbb": VMState.PENDING}


def test_final_records_are_pruned_after_the_history_period(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore, clock: FakeClock
) -> None:
    provisioner.register_need("engine1", 1, [])
    provisioner.step()
    provisioner.register_need("engine1", 0, [])
    provisioner.step()
    assert len(vms_in(store, VMState.TERMINATED)) == 1
    clock.advance(601)
    provisioner.step()
    assert store.list_vms() == []


# -- sites ----------------------------------------------------------------------------------


def test_engines_on_a_static_site_get_no_nodes(
    store: MemoryStore,
    engines: EngineRegistry,
    registration: Registration,
    clock: FakeClock,
) -> None:
    sites = {"default": Site("default", StaticDriver())}
    from dispatcher.provisioner.fake import InlineExecutor

    provisioner = Provisioner(
        store, engines, sites, registration, executor=InlineExecutor(), clock=clock
    )
    provisioner.register_need("engine1", 4, [])
    provisioner.step()
    assert store.list_vms() == []
    assert provisioner.describe()["needs"] == {"engine1": 4}


def test_each_engine_uses_the_site_it_names(
    store: MemoryStore, registration: Registration, clock: FakeClock
) -> None:
    from dispatcher.provisioner.fake import InlineExecutor
    from pdcommon.settings import EngineSettings

    engines = EngineRegistry(
        {"a": EngineSettings(slots=1), "b": EngineSettings(slots=1, site="cloud")},
        default_engine="a",
    )
    local, cloud = FakeDriver("default"), FakeDriver("cloud")
    sites = {"default": Site("default", local), "cloud": Site("cloud", cloud)}
    provisioner = Provisioner(
        store, engines, sites, registration, executor=InlineExecutor(), clock=clock
    )
    provisioner.register_need("a", 1, [])
    provisioner.register_need("b", 2, [])
    provisioner.step()
    assert [r.engine_id for r in local.created] == ["a"]
    assert [r.engine_id for r in cloud.created] == ["b", "b"]
    assert {vm.site for vm in store.list_vms() if vm.engine_id == "b"} == {"cloud"}


# -- wiring ---------------------------------------------------------------------------------


def test_the_need_registrar_drives_the_provisioner(
    provisioner: Provisioner, driver: FakeDriver, store: MemoryStore, engines: EngineRegistry
) -> None:
    registrar = NeedRegistrar(store, provisioner)
    queued = [(f"p{i}", "engine1") for i in range(5)]
    needs = calculate_needs(engines, queued=queued, resources=[])
    registrar.report(needs, {}, {})
    provisioner.step()
    # 5 processes, 2 slots per node: 3 nodes; engine2 needs none
    assert driver.count("create") == 3
    assert provisioner.targets == {"engine1": 3, "engine2": 0}


def test_run_issues_the_creates_of_a_new_need_and_stops_when_told(
    store: MemoryStore,
    engines: EngineRegistry,
    driver: FakeDriver,
    registration: Registration,
) -> None:
    sites = {"default": Site("default", driver, BOOT_TIMEOUT)}
    provisioner = Provisioner(
        store, engines, sites, registration, settings=ProvisionerSettings(interval=30)
    )
    stop = threading.Event()
    thread = threading.Thread(target=provisioner.run, args=(stop,))
    thread.start()
    try:
        provisioner.register_need("engine1", 4, [])
        deadline = time.monotonic() + 10
        while len(vms_in(store, VMState.PENDING)) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(vms_in(store, VMState.PENDING)) == 4
    finally:
        stop.set()
        thread.join(10)
        provisioner.close()
    assert not thread.is_alive()
    assert driver.closed
    assert driver.count("create") == 4


@pytest.mark.parametrize("need", [0, 2])
def test_registering_the_same_need_twice_changes_nothing(
    provisioner: Provisioner, driver: FakeDriver, need: int
) -> None:
    provisioner.register_need("engine1", need, [])
    provisioner.step()
    provisioner.register_need("engine1", need, [])
    provisioner.step()
    assert driver.count("create") == need
