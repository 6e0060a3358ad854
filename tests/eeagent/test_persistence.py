"""The state file and the home-directory lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eeagent.errors import AgentLockedError, PersistenceError
from eeagent.persistence import AgentLock, AgentSnapshot, StateStore
from eeagent.records import ProcessRecord, RememberedTerminate, RetiringProgram


def snapshot() -> AgentSnapshot:
    return AgentSnapshot(
        agent="agent1",
        backend="4242",
        processes=[
            ProcessRecord(
                upid="p1",
                round=3,
                run_type="supd",
                parameters={"exec": "sleep", "argv": ["1"], "env": {"A": "ü %"}},
                state="850-FAILED",
                msg="exited with code 3",
                exit_code=3,
                program="p1-3",
                pid=77,
                identity="boot:123",
            )
        ],
        retiring=[RetiringProgram(name="p0-1", stop_sent_at=1.5)],
        terminates=[RememberedTerminate(upid="p9", round=2, at=1700000000.5)],
    )


def test_a_saved_snapshot_loads_back_identical(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(snapshot())
    assert store.load() == snapshot()


def test_a_state_file_written_before_remembered_terminates_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "agent": "agent1", "processes": [], "retiring": []}')
    loaded = StateStore(path).load()
    assert loaded is not None and loaded.terminates == []


def test_saving_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(snapshot())
    store.save(snapshot())
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]


def test_there_is_nothing_to_load_before_the_first_save(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "state.json").load() is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{truncated", "is not valid JSON"),
        ('{"version": 99, "agent": "a"}', "unsupported format version 99"),
        ('{"version": 1}', "agent: Field required"),
        ("[]", "unsupported format version None"),
    ],
)
def test_an_unreadable_state_file_is_a_persistence_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(PersistenceError, match=message):
        StateStore(path).load()


def test_quarantine_moves_the_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{broken")
    moved = StateStore(path).quarantine()
    assert moved is not None and moved.read_text() == "{broken"
    assert not path.exists()


def test_a_save_that_cannot_write_is_a_persistence_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "missing-dir" / "state.json")
    with pytest.raises(PersistenceError, match="cannot write"):
        store.save(snapshot())


def test_the_file_is_plain_json_an_operator_can_read(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(snapshot())
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["version"] == 1 and data["agent"] == "agent1" and data["backend"] == "4242"
    assert data["processes"][0]["parameters"]["env"] == {"A": "ü %"}


def test_a_second_agent_cannot_take_the_same_home(tmp_path: Path) -> None:
    first = AgentLock(tmp_path / "home" / "agent.lock")
    first.acquire()
    try:
        with pytest.raises(AgentLockedError, match="another pd-eeagent"):
            AgentLock(tmp_path / "home" / "agent.lock").acquire()
    finally:
        first.release()
    again = AgentLock(tmp_path / "home" / "agent.lock")
    again.acquire()
    again.release()
