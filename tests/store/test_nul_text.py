"""Text with NUL characters is refused at the protocol, so every store behaves alike.

PostgreSQL text and JSON columns cannot hold ``\\u0000`` (SQLite can); a request
carrying one must be a BadRequestError before any store sees it, not a driver
error on one backend and a success on the other.
"""

from __future__ import annotations

from typing import Any

import pytest

from dashi.broker import BrokerConfig
from dashi.service import RpcService
from dispatcher.core import RPC_OPERATIONS
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.sql import SqlStore
from tests.support.wiring import make_core

pytestmark = pytest.mark.postgres

CASES = [
    (
        "create_definition",
        {
            "definition_id": "d1",
            "definition_type": "supd",
            "executable": {"exec": "/bin/echo", "argv": ["a\x00b"]},
        },
    ),
    (
        "create_definition",
        {"definition_id": "d\x00", "definition_type": "supd", "executable": {"exec": "/bin/true"}},
    ),
    ("schedule_process", {"upid": "p1", "definition_id": "base", "name": "x\x00y"}),
    ("schedule_process", {"upid": "p1", "definition_id": "base", "configuration": {"k\x00": 1}}),
]


@pytest.mark.parametrize(("op", "args"), CASES)
def test_nul_text_is_a_bad_request_on_postgresql(
    postgres_url: str, op: str, args: dict[str, Any]
) -> None:
    store = SqlStore(postgres_url, create=True)
    try:
        core = make_core(store, RecordingMessenger())
        core.create_definition("base", "supd", {"exec": "/bin/true", "argv": []})
        rpc = RpcService(BrokerConfig(), "process_dispatcher")
        for name in RPC_OPERATIONS:
            rpc.handle(name, getattr(core, name), validate=False)
        reply = rpc.dispatch({"op": op, "args": args}, {})
        assert reply["error"]["exc_type"] == "dashi.exceptions.BadRequestError"
        assert "NUL" in reply["error"]["value"]
        assert store.list_definition_ids() == ["base"]
        assert store.list_processes() == []
    finally:
        store.close()
