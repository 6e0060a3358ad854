"""The dashi wire protocol over the embedded transport and a real RabbitMQ."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import (
    BadRequestError,
    NotFoundError,
    RemoteError,
    RpcTimeoutError,
    UnknownOperationError,
    WriteConflictError,
    WriteRetriesExhaustedError,
)
from dashi.service import RpcService
from tests.support.waiting import wait_for


def test_a_call_returns_the_handlers_result(service, client):
    # Given a service with an "add" handler / When it is called / Then the sum comes back
    assert client.call("calc", "add", a=2, b=40) == 42


def test_a_call_carries_json_values_unchanged(service, client):
    value = {"list": [1, 2.5, None, True], "text": "héllo %s 'quoted' \"x\"", "nested": {"a": []}}
    assert client.call("calc", "echo", value=value) == value


def test_args_dict_and_keywords_cannot_be_mixed(client):
    with pytest.raises(TypeError):
        client.call("calc", "add", args={"a": 1}, b=2)


def test_the_sender_header_reaches_a_handler_that_asks_for_it(service, client, broker):
    assert client.call("calc", "whoami") == broker.prefixed("tester")


def test_fire_delivers_without_a_reply(service, client, calculator):
    client.fire("calc", "record", item={"n": 1})
    assert wait_for(lambda: calculator.fired == [{"n": 1}])


def test_an_unknown_operation_raises_unknown_operation_error(service, client):
    with pytest.raises(UnknownOperationError, match="Unknown operation: nosuchop"):
        client.call("calc", "nosuchop")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"a": 1}, "'b'"),
        ({"a": 1, "b": 2, "c": 3}, "'c'"),
        ({"a": "one", "b": 2}, "a"),
        ({"a": [1], "b": 2}, "a"),
    ],
    ids=["missing", "unexpected", "ill-typed-string", "ill-typed-list"],
)
def test_bad_arguments_raise_bad_request_naming_the_argument(service, client, kwargs, named):
    with pytest.raises(BadRequestError) as info:
        client.call("calc", "add", **kwargs)
    assert named in info.value.value


@pytest.mark.parametrize("error", [BadRequestError, NotFoundError, WriteConflictError])
def test_known_errors_are_rebuilt_as_the_same_type(broker, client, error):
    def fail() -> None:
        raise error("it went wrong")

    svc = RpcService(broker, "failing")
    svc.handle("fail", fail)
    svc.start()
    try:
        with pytest.raises(error) as info:
            client.call("failing", "fail")
        assert info.value.value == "it went wrong"
        assert info.value.exc_type == f"dashi.exceptions.{error.__name__}"
        assert info.value.traceback is None
    finally:
        svc.stop()


def test_other_errors_arrive_as_remote_errors_without_a_traceback(broker, client):
    def fail() -> None:
        raise KeyError("secret-internal-detail")

    svc = RpcService(broker, "failing")
    svc.handle("fail", fail)
    svc.start()
    try:
        with pytest.raises(RemoteError) as info:
            client.call("failing", "fail")
        assert info.value.exc_type == "KeyError"
        assert info.value.traceback is None
        # the service keeps serving after a handler failed
        svc.handle("ok", lambda: "fine")
        assert client.call("failing", "ok") == "fine"
    finally:
        svc.stop()


def test_tracebacks_are_sent_only_when_configured(broker, client):
    def fail() -> None:
        raise ValueError("boom")

    verbose = BrokerConfig(**{**broker.__dict__, "send_tracebacks": True})
    svc = RpcService(verbose, "verbose")
    svc.handle("fail", fail)
    svc.start()
    try:
        with pytest.raises(RemoteError) as info:
            client.call("verbose", "fail")
        assert "Traceback" in (info.value.traceback or "")
        assert "ValueError: boom" in info.value.traceback
    finally:
        svc.stop()


def test_a_call_to_a_silent_service_times_out_with_a_typed_error(client):
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError, match=r"no reply within 0\.5s"):
        client.call("nobody-listens", "anything", timeout=0.5)
    assert time.monotonic() - started < 3.0


def test_a_late_reply_is_not_mistaken_for_the_next_calls_answer(broker, client):
    def slow(value: int) -> int:
        time.sleep(0.8)
        return value

    svc = RpcService(broker, "slow", workers=1)
    svc.handle("slow", slow)
    svc.start()
    try:
        with pytest.raises(RpcTimeoutError):
            client.call("slow", "slow", value=1, timeout=0.3)
        assert client.call("slow", "slow", value=2, timeout=5) == 2
    finally:
        svc.stop()


def test_concurrent_clients_each_get_their_own_replies(service, broker):
    results: dict[int, list[int]] = {}

    def worker(index: int) -> None:
        with RpcClient(broker, f"worker{index}") as rpc:
            results[index] = [rpc.call("calc", "add", a=index, b=i) for i in range(20)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {i: [i + n for n in range(20)] for i in range(6)}


def test_a_shared_client_serializes_calls_from_many_threads(service, client):
    out: list[int] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        value = client.call("calc", "add", a=index, b=1000)
        with lock:
            out.append(value)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(out) == [1000 + i for i in range(8)]


# -- compatibility with legacy dashi peers ---------------------------------------------


def _legacy_call(broker: BrokerConfig, service: str, op: str, args: dict, timeout=5.0):
    """A request exactly as dashi 0.3 sends it: a fresh reply queue, no correlation id."""
    exchange = broker.kombu_exchange()
    reply_name = uuid.uuid4().hex
    replies: list[object] = []
    with broker.connection() as connection:
        queue = kombu.Queue(
            reply_name,
            exchange,
            routing_key=reply_name,
            durable=False,
            queue_arguments=None
            if broker.is_embedded
            else {"x-expires": int((timeout + 1) * 1000)},
        )
        with kombu.Consumer(
            connection, [queue], callbacks=[lambda body, m: (replies.append(body), m.ack())]
        ):
            with kombu.Producer(connection, exchange=exchange) as producer:
                producer.publish(
                    {"op": op, "args": args},
                    routing_key=broker.prefixed(service),
                    headers={"reply-to": reply_name, "sender": "legacy-client"},
                    serializer="json",
                )
            deadline = time.monotonic() + timeout
            while not replies and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
        queue(connection.default_channel).delete()
    return replies


def test_a_legacy_reply_to_only_request_is_answered(service, broker):
    replies = _legacy_call(broker, "calc", "add", {"a": 20, "b": 22})
    assert replies == [{"result": 42, "error": None}]


def test_a_legacy_request_gets_legacy_error_names(service, broker):
    (reply,) = _legacy_call(broker, "calc", "add", {"a": 1})
    assert reply["result"] is None
    assert reply["error"]["exc_type"] == "dashi.exceptions.BadRequestError"
    assert set(reply["error"]) == {"exc_type", "value", "traceback"}


def test_a_write_that_kept_conflicting_reaches_callers_as_a_write_conflict(broker, client):
    # Given a handler whose optimistic write ran out of attempts
    def fail() -> None:
        raise WriteRetriesExhaustedError(
            "process 'p1' kept changing: 5 write attempts lost a race",
            record="process 'p1'",
            attempts=5,
        )

    svc = RpcService(broker, "failing")
    svc.handle("fail", fail)
    svc.start()
    try:
        # When our client calls it, Then the subtype, still a WriteConflictError
        with pytest.raises(WriteRetriesExhaustedError) as info:
            client.call("failing", "fail")
        assert isinstance(info.value, WriteConflictError)
        assert info.value.value == "process 'p1' kept changing: 5 write attempts lost a race"
        # And a legacy caller sees the WriteConflictError it knows (plus an extra member)
        (reply,) = _legacy_call(broker, "failing", "fail", {})
        assert reply["error"]["exc_type"] == "dashi.exceptions.WriteConflictError"
        assert reply["error"]["value"] == info.value.value
        assert reply["error"]["subtype"] == "WriteRetriesExhaustedError"
    finally:
        svc.stop()


class LegacyStyleService:
    """A dashi 0.3-style service: replies on reply-to with no correlation id."""

    def __init__(self, broker: BrokerConfig, name: str) -> None:
        self.broker = broker
        self.name = name
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20)

    def run(self) -> None:
        exchange = self.broker.kombu_exchange()
        queue = kombu.Queue(
            self.broker.prefixed(self.name), exchange, routing_key=self.broker.prefixed(self.name)
        )
        with self.broker.connection() as connection:

            def on_request(body, message):
                args = body.get("args") or {}
                if body["op"] == "add":
                    reply = {"result": args["a"] + args["b"], "error": None}
                else:
                    reply = {
                        "result": None,
                        "error": {
                            "exc_type": "dashi.exceptions.NotFoundError",
                            "value": "no such thing",
                            "traceback": "Traceback (most recent call last): ...",
                        },
                    }
                with kombu.Producer(connection, exchange=exchange) as producer:
                    producer.publish(
                        reply, routing_key=message.headers["reply-to"], serializer="json"
                    )
                message.ack()

            with kombu.Consumer(connection, [queue], callbacks=[on_request]):
                self.ready.set()
                while not self.stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.mark.parametrize("legacy_queues", [False, True], ids=["long-lived", "fresh-queue"])
def test_our_client_works_against_a_legacy_style_service(broker, legacy_queues):
    legacy = LegacyStyleService(broker, "oldsvc")
    try:
        with RpcClient(broker, "modern", legacy_reply_queues=legacy_queues) as rpc:
            assert rpc.call("oldsvc", "add", a=1, b=2) == 3
            assert rpc.call("oldsvc", "add", a=5, b=5) == 10
            with pytest.raises(NotFoundError) as info:
                rpc.call("oldsvc", "other")
            assert info.value.traceback.startswith("Traceback")
    finally:
        legacy.close()


# -- malformed input on the raw queue ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"this is not json", "application/json"),
        (b"\x80\x03}q\x00.", "application/x-python-serialize"),
        (b"<xml/>", "application/xml"),
        (b"[1, 2, 3]", "application/json"),
        (b'{"args": {}}', "application/json"),
        (b'{"op": 5, "args": {}}', "application/json"),
        (b'{"op": "add", "args": [1, 2]}', "application/json"),
    ],
    ids=["bad-json", "pickle", "xml", "not-an-object", "no-op", "op-not-a-string", "args-list"],
)
def test_malformed_requests_get_bad_request_and_the_service_stays_up(
    service, client, broker, body, content_type
):
    exchange = broker.kombu_exchange()
    reply_name = uuid.uuid4().hex
    replies: list[object] = []
    with broker.connection() as connection:
        queue = kombu.Queue(reply_name, exchange, routing_key=reply_name, auto_delete=True)
        with kombu.Consumer(
            connection, [queue], callbacks=[lambda b, m: (replies.append(b), m.ack())]
        ):
            with kombu.Producer(connection, exchange=exchange) as producer:
                producer.publish(
                    body,
                    routing_key=broker.prefixed("calc"),
                    headers={"reply-to": reply_name},
                    content_type=content_type,
                    content_encoding="binary",
                )
            deadline = time.monotonic() + 5
            while not replies and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
    assert len(replies) == 1
    assert replies[0]["error"]["exc_type"] == "dashi.exceptions.BadRequestError"
    assert client.call("calc", "add", a=1, b=1) == 2


def test_a_request_without_headers_is_handled_and_not_answered(service, client, broker, calculator):
    with (
        broker.connection() as connection,
        kombu.Producer(connection, exchange=broker.kombu_exchange()) as producer,
    ):
        producer.publish(
            {"op": "record", "args": {"item": "headless"}},
            routing_key=broker.prefixed("calc"),
            serializer="json",
        )
    assert wait_for(lambda: calculator.fired == ["headless"])
    assert client.call("calc", "add", a=2, b=2) == 4
