"""The test-session infrastructure really works: private RabbitMQ, PostgreSQL, supervisord."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select, text

from tests.infra import PostgresServer, RabbitMQServer

# --------------------------------------------------------------------------- RabbitMQ


def _drain_one(conn: Connection, queue: Queue, timeout: float = 10.0) -> list[Any]:
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with Consumer(conn, [queue], callbacks=[on_message], accept=["json"]):
        conn.drain_events(timeout=timeout)
    return received


@pytest.mark.rabbitmq
def test_rabbitmq_publish_consume_round_trip(amqp_uri: str, sysname: str) -> None:
    assert re.fullmatch(r"amqp://guest:guest@127\.0\.0\.1:\d+//", amqp_uri)
    exchange = Exchange(f"{sysname}.x", type="direct", durable=False, auto_delete=True)
    queue = Queue(f"{sysname}.q", exchange, routing_key="rk", durable=False, auto_delete=True)
    with Connection(amqp_uri, connect_timeout=10) as conn:
        producer = Producer(conn.default_channel, serializer="json")
        producer.declare()
        queue(conn.default_channel).declare()
        producer.publish({"op": "ping", "args": {"n": 1}}, exchange=exchange, routing_key="rk")
        assert _drain_one(conn, queue) == [{"op": "ping", "args": {"n": 1}}]


@pytest.mark.rabbitmq
def test_rabbitmq_cli_reaches_private_node(rabbitmq: RabbitMQServer) -> None:
    result = rabbitmq.ctl("rabbitmq-diagnostics", "ping")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_rabbitmq_restart_keeps_port_and_data(rabbitmq: RabbitMQServer, sysname: str) -> None:
    uri_before = rabbitmq.uri
    queue = Queue(f"{sysname}.durable", Exchange(""), routing_key=f"{sysname}.durable",
                  durable=True)  # fmt: skip
    with Connection(uri_before, connect_timeout=10) as conn:
        queue(conn.default_channel).declare()
        Producer(conn.default_channel, serializer="json").publish(
            {"kept": True}, exchange="", routing_key=queue.name, delivery_mode=2
        )

    rabbitmq.restart()

    assert rabbitmq.running
    assert rabbitmq.uri == uri_before
    with Connection(rabbitmq.uri, connect_timeout=10) as conn:
        assert _drain_one(conn, queue) == [{"kept": True}]
        queue(conn.default_channel).delete()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_postgres_select_and_table_round_trip(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
            assert (
                conn.execute(text("select current_database()")).scalar_one()
                == (postgres_url.rsplit("/", 1)[1])
            )
        metadata = MetaData()
        items = Table(
            "items",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("name", String(50), nullable=False),
        )
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(items.insert(), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
        with engine.connect() as conn:
            rows = conn.execute(select(items.c.id, items.c.name).order_by(items.c.id)).all()
        assert [tuple(row) for row in rows] == [(1, "a"), (2, "b")]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_databases_are_per_test(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                text("select count(*) from information_schema.tables where table_schema='public'")
            ).scalar_one()
        assert tables == 0
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_restart_then_reconnect(postgres: PostgresServer, postgres_url: str) -> None:
    engine = create_engine(postgres_url, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            conn.execute(text("create table kept (v text)"))
            conn.execute(text("insert into kept values ('x')"))
        url_before = postgres.url("postgres")

        postgres.restart()

        assert postgres.running
        assert postgres.url("postgres") == url_before
        # The pooled connection died with the old server; pre-ping replaces it.
        with engine.connect() as conn:
            assert conn.execute(text("select v from kept")).scalar_one() == "x"
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- fixtures


@pytest.mark.supervisord
def test_supervisord_bin_runs(supervisord_bin: str) -> None:
    result = subprocess.run(
        [supervisord_bin, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert re.match(r"\d+\.\d+", result.stdout.strip())


@pytest.mark.postgres
def test_marker_sets_up_server_fixture(request: pytest.FixtureRequest) -> None:
    assert "postgres" in request.fixturenames
    server = request.getfixturevalue("postgres")
    assert isinstance(server, PostgresServer) and server.running


def test_sysname_is_unique(sysname: str, request: pytest.FixtureRequest) -> None:
    assert re.fullmatch(r"t[0-9a-f]{10}", sysname)
    assert "rabbitmq" not in request.fixturenames  # servers only start when needed
