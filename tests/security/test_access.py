"""Each role can do exactly its operations: a table over every operation x role.

A real dispatcher on RabbitMQ with three principals (``reader``, ``operator``,
``admin``), a master key for the agents and ``security.require_auth`` on. Every
operation the dispatcher serves is called by each principal, by a client that
authenticates as nobody, by one with a wrong secret and by an unknown principal;
the set of refused calls (``BadRequestError`` starting ``not authorized:``) must be
exactly the one the roles give.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from dashi.client import RpcClient
from dashi.errors import BadRequestError, RequestError
from dashi.security import MessageSigner
from dispatcher.requests import ScheduleProcessRequest
from dispatcher.service import RPC_OPERATIONS, operation_roles
from pdcommon.auth import OperationRole, principal_key
from pdcommon.requests import Request
from tests.service.conftest import Harness, harness_factory

__all__ = ["harness_factory"]  # the fixture, shared with tests/service

pytestmark = pytest.mark.rabbitmq

MASTER = "access-test-master-key-0123456789"
SECRETS = {
    "rita": "reader-secret-0123456789",
    "otto": "operator-secret-0123456789",
    "ada": "admin-secret-0123456789",
}
ROLES = {"rita": "reader", "otto": "operator", "ada": "admin"}

#: The least role of each operation, as docs/security.md lists it.
EXPECTED_ROLES = {
    "describe_definition": "reader",
    "list_definitions": "reader",
    "describe_process": "reader",
    "describe_processes": "reader",
    "describe_process_events": "reader",
    "dump": "reader",
    "list_engines": "reader",
    "get_process_logs": "reader",
    "create_definition": "operator",
    "update_definition": "operator",
    "remove_definition": "operator",
    "create_process": "operator",
    "schedule_process": "operator",
    "restart_process": "operator",
    "terminate_process": "operator",
    "terminate_processes": "operator",
    "set_group_ttl": "operator",
    "set_system_boot": "admin",
    "add_engine": "admin",
    "node_state": "admin",
    "heartbeat": "agent",
}

#: Valid arguments of every operation (the call may still fail for another reason).
ARGUMENTS: dict[str, dict[str, Any]] = {
    "create_definition": {
        "definition_id": "D2",
        "definition_type": "supd",
        "executable": {"exec": "/bin/true"},
    },
    "update_definition": {
        "definition_id": "D",
        "definition_type": "supd",
        "executable": {"exec": "/bin/true"},
    },
    "describe_definition": {"definition_id": "D"},
    "remove_definition": {"definition_id": "no-such-definition"},
    "list_definitions": {},
    "create_process": {"upid": "created", "definition_id": "D"},
    "schedule_process": {"upid": "scheduled", "definition_id": "D"},
    "describe_process": {"upid": "scheduled"},
    "describe_processes": {},
    "describe_process_events": {"upid": "scheduled"},
    "restart_process": {"upid": "no-such-process"},
    "terminate_process": {"upid": "no-such-process"},
    "terminate_processes": {"group": "no-such-group"},
    "set_group_ttl": {"group": "no-such-group", "ttl_seconds": None},
    "set_system_boot": {"system_boot": False},
    "dump": {},
    "heartbeat": {"message": {"eeagent_id": "x", "node_id": "n", "processes": []}},
    "node_state": {"node_id": "n9", "domain_id": "pd_domain_engine1", "state": "600-RUNNING"},
    "add_engine": {"definition": {"engine_id": "engine9", "slots": 1}},
    "list_engines": {},
    "get_process_logs": {"upid": "no-such-process"},
}


@pytest.fixture
def secured(harness_factory: Callable[..., Harness]) -> Iterator[Harness]:
    principals = {name: {"role": ROLES[name], "secret": SECRETS[name]} for name in ROLES}
    # ada's secret is configured by its hash only
    principals["ada"] = {"role": "admin", "secret_hash": principal_key(SECRETS["ada"]).hex()}
    harness = harness_factory(
        overrides={
            "security.hmac_key": MASTER,
            "security.principals": principals,
            "security.require_auth": True,
            "security.client": {"principal": "ada", "secret": SECRETS["ada"]},
        }
    )
    harness.define()
    yield harness


def caller(harness: Harness, principal: str | None, secret: str | None) -> RpcClient:
    signer = None
    if principal is not None and secret is not None:
        signer = MessageSigner(principal_key(secret), principal=principal)
    return RpcClient(harness.broker, f"as-{principal}", timeout=20, signer=signer)


def refused(rpc: RpcClient, op: str) -> bool:
    """Whether ``op`` was refused as not authorized (any other outcome: let through)."""
    try:
        rpc.call("process_dispatcher", op, args=ARGUMENTS[op])
    except BadRequestError as exc:
        return exc.value.startswith("not authorized:")
    except RequestError:
        pass
    return False


def test_every_operation_declares_the_documented_role() -> None:
    roles = {op: role.value for op, role in operation_roles().items()}
    assert roles == EXPECTED_ROLES
    assert set(ARGUMENTS) == set(RPC_OPERATIONS)


def test_a_request_model_with_an_operation_and_no_role_cannot_be_defined() -> None:
    with pytest.raises(TypeError, match="without a role"):

        class Forgotten(Request):
            operation: ClassVar[str] = "forgotten"

    # nor can a subclass inherit its parent's role for an operation of its own
    with pytest.raises(TypeError, match="without a role"):

        class Inherited(ScheduleProcessRequest):
            operation: ClassVar[str] = "schedule_again"

    class Declared(ScheduleProcessRequest):
        operation: ClassVar[str] = "schedule_again"
        role: ClassVar[OperationRole] = OperationRole.ADMIN

    assert Declared.role is OperationRole.ADMIN


def test_each_role_can_do_exactly_its_operations(
    secured: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    rank = {"reader": 0, "operator": 1, "admin": 2}
    # Given three principals and callers that are no principal at all
    callers = {name: (name, SECRETS[name]) for name in ROLES}
    callers["nobody"] = (None, None)
    callers["wrong-secret"] = ("ada", "not-adas-secret-0123456789")
    callers["unknown"] = ("mallory", "mallorys-secret-0123456789")
    # When each calls every operation
    actual: dict[tuple[str, str], bool] = {}
    with caplog.at_level(logging.WARNING, logger="pdcommon.auth"):
        for who, (principal, secret) in callers.items():
            with caller(secured, principal, secret) as rpc:
                for op in RPC_OPERATIONS:
                    actual[(op, who)] = refused(rpc, op)
    # Then exactly the calls the roles do not allow were refused
    expected = {}
    for op in RPC_OPERATIONS:
        needed = EXPECTED_ROLES[op]
        for who in callers:
            role = ROLES.get(who)
            allowed = (
                role is not None and needed != "agent" and rank[role] >= rank[EXPECTED_ROLES[op]]
            )
            expected[(op, who)] = not allowed
    assert actual == expected
    # And every refusal was logged at WARNING, naming the operation, never a secret
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == sum(expected.values())
    assert any("refused node_state by 'otto'" in w for w in warnings)
    for secret in (*SECRETS.values(), MASTER):
        assert not any(secret in w for w in warnings)


def test_a_refusal_names_the_operation_and_the_principal(secured: Harness) -> None:
    with caller(secured, "rita", SECRETS["rita"]) as rpc, pytest.raises(BadRequestError) as info:
        rpc.call("process_dispatcher", "terminate_process", upid="scheduled")
    assert info.value.value == (
        "not authorized: terminate_process by rita (role reader; terminate_process needs operator)"
    )
    assert SECRETS["rita"] not in str(info.value)


def test_the_client_library_signs_as_its_configured_principal(secured: Harness) -> None:
    # The harness's client is configured as ada (security.client)
    secured.client.schedule_process("p-lib", "D")
    assert secured.client.describe_process("p-lib") is not None


def test_a_dispatcher_on_a_real_broker_without_principals_warns_once_and_serves_everyone(
    harness_factory: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    # Given no principals, on RabbitMQ
    with caplog.at_level(logging.WARNING, logger="dispatcher.service"):
        harness = harness_factory()
    warnings = [r.getMessage() for r in caplog.records if "no principals" in r.getMessage()]
    assert len(warnings) == 1 and "guest:***@" in warnings[0]
    # Then an unauthenticated client may do everything, as with the legacy system
    with caller(harness, None, None) as rpc:
        assert not any(refused(rpc, op) for op in RPC_OPERATIONS if op != "heartbeat")


def _pd_cli(secured: Harness, env: dict[str, str], *args: str) -> Any:
    from click.testing import CliRunner

    from cli.pdcli import main as pd_cli

    sysname = secured.settings.dashi.sysname
    assert sysname is not None
    base = {
        "PD_AMQP_URI": secured.settings.amqp_uri,
        "PD_STATE_DIR": str(secured.settings.state_dir),
    }
    return CliRunner().invoke(
        pd_cli, ["--sysname", sysname, "--timeout", "20", *args], env={**base, **env}
    )


def test_pd_cli_authenticates_with_pd_principal_and_pd_secret(secured: Harness) -> None:
    # As the operator: a schedule is carried out
    otto = {"PD_PRINCIPAL": "otto", "PD_SECRET": SECRETS["otto"]}
    result = _pd_cli(secured, otto, "process", "schedule", "cli-p1", "--definition", "D")
    assert result.exit_code == 0, result.output
    assert secured.client.describe_process("cli-p1") is not None
    # As the reader: refused, naming the operation and the principal, not the secret
    rita = {"PD_PRINCIPAL": "rita", "PD_SECRET": SECRETS["rita"]}
    result = _pd_cli(secured, rita, "process", "terminate", "cli-p1")
    assert result.exit_code != 0
    assert "not authorized: terminate_process by rita" in result.output
    assert SECRETS["rita"] not in result.output
    # Without credentials: refused (require_auth)
    result = _pd_cli(secured, {}, "definition", "list")
    assert result.exit_code != 0 and "unauthenticated" in result.output


def test_pd_dispatcher_prints_a_principals_secret_hash_and_an_agents_key(
    tmp_path: Any,
) -> None:
    from click.testing import CliRunner

    from cli.dispatcher import main as pd_dispatcher
    from dashi.security import derive_key

    runner = CliRunner()
    result = runner.invoke(pd_dispatcher, ["principal-hash"], input=SECRETS["ada"] + "\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == principal_key(SECRETS["ada"]).hex()
    config = tmp_path / "pd.yml"
    config.write_text(
        f"dashi: {{sysname: s1}}\nsecurity: {{hmac_key: {MASTER}}}\nstate_dir: {tmp_path}\n"
    )
    result = runner.invoke(pd_dispatcher, ["--config", str(config), "agent-key", "web-0"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == derive_key(MASTER, "s1.web-0").hex()
    # Without a next master, --next is a usage error naming the key
    result = runner.invoke(pd_dispatcher, ["--config", str(config), "agent-key", "--next", "web-0"])
    assert result.exit_code == 2 and "next_hmac_key" in result.output
