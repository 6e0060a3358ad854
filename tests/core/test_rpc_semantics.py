"""A representative set of the core's RPC semantics, over real RPC.

The core runs behind an :class:`~dashi.service.RpcService` on a real
RabbitMQ with a SQL store, and is driven through
:class:`~dispatcher.client.ProcessDispatcherClient`, so arguments, results and
errors cross the wire exactly as they do for a legacy dashi caller. The numbers in
the test names are those of the legacy system's acceptance scenarios; the full
list runs against the core directly in the other modules of this package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import BadRequestError, NotFoundError, WriteConflictError
from dashi.service import RpcService
from dispatcher.client import ProcessDispatcherClient
from dispatcher.core import RPC_OPERATIONS
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.sql import SqlStore
from pdcommon.states import ProcessState
from tests.support.wiring import make_core

pytestmark = pytest.mark.rabbitmq

D = "D"
EXECUTABLE = {"module": "some.module", "class": "SomeClass"}


@pytest.fixture
def pd(amqp_uri: str, sysname: str, tmp_path: Path) -> Iterator[ProcessDispatcherClient]:
    """A client of a core served over RabbitMQ, on SQLite, with definition D."""
    broker = BrokerConfig(uri=amqp_uri, sysname=sysname, heartbeat=10)
    store = SqlStore(f"sqlite:///{tmp_path}/pd.db", create=True)
    core = make_core(store, RecordingMessenger())
    service = RpcService(broker, "process_dispatcher", workers=2)
    for op in RPC_OPERATIONS:
        service.handle(op, getattr(core, op), validate=False)
    service.start()
    client = ProcessDispatcherClient(RpcClient(broker, "tester", timeout=10))
    try:
        client.create_definition(D, "supd", EXECUTABLE)
        yield client
    finally:
        client.close()
        service.stop()
        store.close()


def test_1_scheduling_an_unknown_process_without_a_definition_is_not_found(pd):
    with pytest.raises(NotFoundError):
        pd.schedule_process("proc1")
    assert pd.describe_processes() == []


def test_2_scheduling_a_new_process_requests_it_in_round_zero(pd):
    result = pd.schedule_process("proc1", D)
    assert result == {
        "upid": "proc1",
        "state": ProcessState.REQUESTED,
        "round": 0,
        "assigned": None,
    }


def test_3_create_process_is_idempotent_but_refuses_another_definition_or_name(pd):
    pd.create_definition("def2", "supd", EXECUTABLE)
    assert pd.create_process("proc1", D)["state"] == ProcessState.UNSCHEDULED
    assert pd.create_process("proc1", D)["state"] == ProcessState.UNSCHEDULED
    with pytest.raises(BadRequestError):
        pd.create_process("proc1", "def2")
    with pytest.raises(BadRequestError):
        pd.create_process("proc1", D, name="hats")


def test_4_schedule_process_is_idempotent_but_refuses_other_modes(pd):
    pd.create_process("proc1", D)
    assert pd.schedule_process("proc1")["state"] == ProcessState.REQUESTED
    again = pd.schedule_process("proc1")
    assert (again["state"], again["round"]) == (ProcessState.REQUESTED, 0)
    with pytest.raises(BadRequestError):
        pd.schedule_process("proc1", restart_mode="ALWAYS")
    with pytest.raises(BadRequestError):
        pd.schedule_process("proc1", queueing_mode="START_ONLY")


def test_5_name_changes_are_tolerated(pd):
    pd.create_process("proc1", D, name="name1")
    assert pd.schedule_process("proc1", name="name2")["state"] == ProcessState.REQUESTED
    assert pd.schedule_process("proc1", name="name3")["state"] == ProcessState.REQUESTED


def test_6_subscribers_are_stored_as_lists(pd):
    pd.create_process("proc1", D)
    pd.schedule_process("proc1", subscribers=[("destination", "operation")])
    assert pd.describe_process("proc1")["subscribers"] == [["destination", "operation"]]


def test_7_terminating_an_unknown_process_is_not_found(pd):
    with pytest.raises(NotFoundError):
        pd.terminate_process("notarealprocess")


def test_9_terminating_a_queued_process_terminates_it(pd):
    pd.schedule_process("proc1", D)
    assert pd.terminate_process("proc1")["state"] == ProcessState.TERMINATED
    assert pd.describe_process("proc1")["state"] == ProcessState.TERMINATED
    # and terminating it again (a terminal process) returns the same state
    assert pd.terminate_process("proc1")["state"] == ProcessState.TERMINATED


def test_rescheduling_a_terminated_process_starts_the_next_round(pd):
    pd.schedule_process("proc1", D)
    pd.terminate_process("proc1")
    result = pd.schedule_process("proc1", D)
    assert (result["state"], result["round"]) == (ProcessState.REQUESTED, 1)


def test_15_definitions_crud(pd):
    pd.create_definition("d1", "t1", "notepad.exe")
    described = pd.describe_definition("d1")
    assert (described["definition_id"], described["definition_type"]) == ("d1", "t1")
    assert described["executable"] == "notepad.exe"
    pd.update_definition("d1", "t1", "notepad2.exe")
    assert pd.describe_definition("d1")["executable"] == "notepad2.exe"
    assert "d1" in pd.list_definitions()
    with pytest.raises(WriteConflictError):
        pd.create_definition("d1", "t1", "again.exe")
    pd.remove_definition("d1")
    assert pd.describe_definition("d1") is None
    with pytest.raises(NotFoundError):
        pd.update_definition("d1", "t1", "notepad3.exe")


def test_16_describe_one_and_all(pd):
    pd.schedule_process("proc1", D)
    assert [p["upid"] for p in pd.describe_processes()] == ["proc1"]
    assert pd.describe_process("proc1")["upid"] == "proc1"
    pd.schedule_process("proc2", D)
    assert {p["upid"] for p in pd.describe_processes()} == {"proc1", "proc2"}
    assert pd.describe_process("nosuchproc") is None
    assert set(pd.dump()["processes"]) == {"proc1", "proc2"}


def test_bad_arguments_are_bad_requests_naming_the_field_and_write_nothing(pd):
    with pytest.raises(BadRequestError, match="queueing_mode"):
        pd.schedule_process("proc1", D, queueing_mode="SOMETIMES")
    with pytest.raises(BadRequestError, match="upid"):
        pd.schedule_process("bad upid!", D)
    assert pd.describe_processes() == []
