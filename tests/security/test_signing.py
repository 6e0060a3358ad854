"""HMAC signatures of agent commands: the documented format, what a signature
covers, the replay window and the nonce memory (no broker)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from pydantic import SecretStr

from dashi.errors import BadRequestError
from dashi.security import (
    HEADER_SIGNATURE,
    CommandGuard,
    MessageSigner,
    NotAuthorizedError,
    SignatureVerifier,
    canonical_message,
    derive_key,
)
from pdcommon.errors import ConfigError
from pdcommon.settings import load_settings
from tests.support.clock import FakeClock

KEY = "0123456789abcdef-shared-secret"
NOW = 1_770_000_000.0
ARGS: dict[str, Any] = {
    "u_pid": "p1",
    "round": 2,
    "run_type": "supd",
    "parameters": {"exec": "/bin/echo", "argv": ["ünï", "a b"], "env": {"X": "1"}},
}
SENDER = "sys.process_dispatcher"
TO = "sys.agent7"


def signed(clock: FakeClock | None = None, **overrides: Any) -> tuple[str, dict[str, Any]]:
    fields: dict[str, Any] = {"op": "launch_process", "args": ARGS, "sender": SENDER, "to": TO}
    fields.update(overrides)
    signer = MessageSigner(KEY, clock=clock or FakeClock(NOW))
    return signer.sign(**fields), fields


def verifier(clock: FakeClock | None = None, max_age: float = 300.0) -> SignatureVerifier:
    return SignatureVerifier(KEY, max_age=max_age, clock=clock or FakeClock(NOW))


def test_the_signature_is_the_documented_hmac_of_the_canonical_json() -> None:
    # Given a signature made by the signer
    header, _ = signed()
    version, timestamp, nonce, mac = header.split(":")
    # Then it is v1, the timestamp with six decimals, a 32-hex-digit nonce, and the
    # HMAC-SHA256 of the canonical JSON the module docstring shows
    assert version == "v1" and timestamp == f"{NOW:.6f}" and len(nonce) == 32
    document = {
        "args": ARGS,
        "nonce": nonce,
        "op": "launch_process",
        "sender": SENDER,
        "timestamp": timestamp,
        "to": TO,
        "v": 1,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical_message(
        op="launch_process", args=ARGS, sender=SENDER, to=TO, timestamp=timestamp, nonce=nonce
    ) == text.encode("ascii")
    assert mac == hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


def test_a_valid_signature_is_accepted_after_a_json_round_trip_of_the_arguments() -> None:
    header, fields = signed()
    # The receiver sees the arguments as decoded from the wire, keys in another order
    fields["args"] = json.loads(json.dumps(dict(reversed(list(ARGS.items())))))
    verifier().verify(header, **fields)


@pytest.mark.parametrize(
    "change",
    [
        {"op": "terminate_process"},
        {"args": {**ARGS, "round": 3}},
        {"args": {**ARGS, "parameters": {"exec": "/bin/sh", "argv": ["-c", "id"]}}},
        {"sender": "sys.intruder"},
        {"to": "sys.agent8"},
    ],
    ids=["op", "round", "parameters", "sender", "destination"],
)
def test_a_signature_covers_the_op_the_arguments_the_sender_and_the_destination(
    change: dict[str, Any],
) -> None:
    header, fields = signed()
    fields.update(change)
    with pytest.raises(NotAuthorizedError, match="invalid signature"):
        verifier().verify(header, **fields)


def test_a_signature_made_with_another_key_is_refused() -> None:
    header = MessageSigner("another-key-of-enough-length", clock=FakeClock(NOW)).sign(
        op="cleanup", args={}, sender=SENDER, to=TO
    )
    with pytest.raises(NotAuthorizedError, match="invalid signature"):
        verifier().verify(header, op="cleanup", args={}, sender=SENDER, to=TO)


@pytest.mark.parametrize(
    "header",
    [None, "", 42, "v1", "v2:1:2:3", "v1:x:n:mac", "v1:1770000000.0:n:mac:extra"],
)
def test_a_missing_or_malformed_signature_is_refused(header: Any) -> None:
    with pytest.raises(NotAuthorizedError, match="not authorized"):
        verifier().verify(header, op="cleanup", args={}, sender=SENDER, to=TO)


@pytest.mark.parametrize("skew", [-301.0, 301.0], ids=["too-old", "from-the-future"])
def test_a_signature_outside_the_replay_window_is_refused(skew: float) -> None:
    # Given a message signed `skew` seconds before the receiver's clock
    header, fields = signed(FakeClock(NOW - skew))
    # Then it is refused, however valid its MAC
    with pytest.raises(NotAuthorizedError, match="replay window"):
        verifier(FakeClock(NOW)).verify(header, **fields)
    # And one just inside the window is accepted
    header, fields = signed(FakeClock(NOW - skew * 299 / 301))
    verifier(FakeClock(NOW)).verify(header, **fields)


def test_the_same_signed_message_is_accepted_only_once() -> None:
    header, fields = signed()
    check = verifier()
    check.verify(header, **fields)
    with pytest.raises(NotAuthorizedError, match="replay"):
        check.verify(header, **fields)
    # A new signature of the same command (a dispatcher retry) is a new message
    again, _ = signed()
    check.verify(again, **fields)


def test_nonces_are_forgotten_once_their_messages_can_no_longer_be_accepted() -> None:
    clock = FakeClock(NOW)
    check = verifier(clock, max_age=10)
    for _ in range(5):
        header, fields = signed(clock)
        check.verify(header, **fields)
    assert len(check._seen) == 5
    # Twice the window later, a new message clears the old nonces
    clock.now += 21
    header, fields = signed(clock)
    check.verify(header, **fields)
    assert len(check._seen) == 1


def test_the_guard_checks_the_sender_before_the_signature() -> None:
    guard = CommandGuard(expected_sender=SENDER, destination=TO, verifier=verifier())
    header, _ = signed()
    headers = {"sender": "sys.intruder", HEADER_SIGNATURE: header}
    with pytest.raises(BadRequestError, match=r"accepted only from 'sys\.process_dispatcher'"):
        guard("launch_process", ARGS, headers)
    guard("launch_process", ARGS, {"sender": SENDER, HEADER_SIGNATURE: header})
    # Without a verifier only the sender counts
    open_guard = CommandGuard(expected_sender=SENDER, destination=TO, verifier=None)
    open_guard("launch_process", ARGS, {"sender": SENDER})
    with pytest.raises(BadRequestError, match="not authorized"):
        open_guard("launch_process", ARGS, {})


def test_the_key_is_in_no_repr_and_no_configuration_error() -> None:
    signer, check = MessageSigner(KEY), SignatureVerifier(SecretStr(KEY), max_age=5)
    assert KEY not in repr(signer) and KEY not in repr(check)
    settings = load_settings(overrides={"security.hmac_key": KEY})
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    # A key too short is refused without quoting it
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"security.hmac_key": "short-secret"})
    assert "short-secret" not in str(info.value)
    assert "at least 16 characters" in str(info.value)


def test_the_agent_template_carries_the_key_to_agents_but_not_into_its_repr() -> None:
    from dispatcher.provisioner.agents import AgentTemplate

    settings = load_settings(
        overrides={"security.hmac_key": KEY, "server.amqp.uri": "amqp://u:pw-123@h/v"}
    )
    template = AgentTemplate.from_settings(settings)
    assert KEY not in repr(template) and "pw-123" not in repr(template)
    config = template.config(
        agent_name="n1-0", state_dir="/s", supd_directory="/d", node_id="n1", slots=2, heartbeat=5.0
    )
    # Each agent gets its own key, derived from the master, never the master itself
    assert config["security"] == {
        "agent_key": derive_key(KEY, "n1-0").hex(),
        "signature_max_age": 300.0,
    }
    assert KEY not in str(config)
    # Without a key, agents get no security section (legacy behaviour)
    bare = AgentTemplate.from_settings(load_settings()).config(
        agent_name="n1-0", state_dir="/s", supd_directory="/d", node_id="n1", slots=2, heartbeat=5.0
    )
    assert "security" not in bare
