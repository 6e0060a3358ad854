"""The SQL schema: one SQLAlchemy ``MetaData`` shared by the SQL store and the migrations.

Alembic's autogenerate compares this metadata with a migrated database; a test
asserts the difference is empty, so a schema change here needs a new revision
under ``dispatcher/migrations/versions``.

Tables:

``definitions``  one row per definition (JSON: ``executable``, legacy ``version``;
                 ``max_runtime_seconds``, the default of its processes, nullable).
``processes``    one row per process; ``id`` gives creation order, ``upid`` is unique,
                 ``version`` is the optimistic-concurrency counter; ``group_name``
                 (indexed) and ``labels`` (JSON) are nullable.
``process_events``  the bounded event history of each process (state changes with
                 their time, round, agent, node, reason, exit code and kept output).
``queue``        ``(upid, round)`` entries; ``id`` gives FIFO order; duplicates allowed.
``resources``    eeagents, versioned.
``nodes``        VMs, versioned.
``vms``          nodes the provisioner launched, with their lifecycle state, versioned.
``engines``      engines added with ``add_engine`` (JSON spec).
``pd_state``     key/value rows: ``pd_state``, ``system_boot``, ``initialized``.
``applied_requests``  ids of state-changing requests with the result they answered
                 (see :mod:`dispatcher.store.applied`); pruned by ``applied_at``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)

__all__ = [
    "applied_requests",
    "definitions",
    "engines",
    "metadata",
    "nodes",
    "pd_state",
    "process_events",
    "processes",
    "queue",
    "resources",
    "vms",
]

#: Constraint names are fixed so that migrations can refer to them on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only makes INTEGER PRIMARY KEY an auto-incrementing rowid alias.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

definitions = Table(
    "definitions",
    metadata,
    Column("definition_id", Text, primary_key=True),
    Column("definition_type", Text),
    Column("executable", JSON),
    Column("name", Text),
    Column("description", Text),
    Column("legacy_version", JSON),
    Column("max_runtime_seconds", Float),
)

processes = Table(
    "processes",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("upid", Text, nullable=False, unique=True),
    Column("name", Text),
    Column("state", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("definition", JSON),
    Column("configuration", JSON),
    Column("constraints", JSON),
    Column("subscribers", JSON),
    Column("queueing_mode", Text),
    Column("restart_mode", Text),
    Column("node_exclusive", Text),
    Column("assigned", Text),
    Column("hostname", Text),
    Column("starts", Integer, nullable=False),
    Column("start_times", JSON),
    Column("dispatches", Integer, nullable=False),
    Column("dispatch_times", JSON),
    Column("exit_code", Integer),
    Column("signal", Integer),
    Column("reason", Text),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("restarts", Integer, nullable=False, server_default="0"),
    Column("next_restart_at", Float),
    Column("max_runtime_seconds", Float),
    Column("restart_policy", JSON),
    Column("failure_times", JSON),
    Column("group_name", Text),
    Column("labels", JSON),
    Column("version", Integer, nullable=False),
    Index(None, "state"),
    Index(None, "group_name"),
)

process_events = Table(
    "process_events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("upid", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("time", Float, nullable=False),
    Column("state", Text, nullable=False),
    Column("reason", Text),
    Column("agent", Text),
    Column("node", Text),
    Column("exit_code", Integer),
    Column("signal", Integer),
    Column("output", JSON),
    Index(None, "upid", "id"),
)

queue = Table(
    "queue",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("upid", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Index(None, "upid", "round"),
)

resources = Table(
    "resources",
    metadata,
    Column("resource_id", Text, primary_key=True),
    Column("node_id", Text, nullable=False),
    Column("slot_count", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("properties", JSON),
    Column("assigned", JSON),
    Column("last_heartbeat", Text),
    Column("version", Integer, nullable=False),
)

nodes = Table(
    "nodes",
    metadata,
    Column("node_id", Text, primary_key=True),
    Column("domain_id", Text),
    Column("properties", JSON),
    Column("resources", JSON),
    Column("node_exclusive", JSON),
    Column("state_time", Float, nullable=False),
    Column("version", Integer, nullable=False),
)

engines = Table(
    "engines",
    metadata,
    Column("engine_id", Text, primary_key=True),
    Column("spec", JSON, nullable=False),
)

pd_state = Table(
    "pd_state",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

vms = Table(
    "vms",
    metadata,
    Column("node_id", Text, primary_key=True),
    Column("engine_id", Text, nullable=False),
    Column("site", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("final_state", Text, nullable=False),
    Column("provider_id", Text),
    Column("properties", JSON),
    Column("reason", Text),
    Column("last_error", Text),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt", Float, nullable=False),
    Column("requested_at", Float, nullable=False),
    Column("state_time", Float, nullable=False),
    Column("version", Integer, nullable=False),
)

applied_requests = Table(
    "applied_requests",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("op", Text, nullable=False),
    Column("digest", Text, nullable=False),
    Column("result", JSON),
    Column("applied_at", Float, nullable=False),
    Index(None, "applied_at"),
)
