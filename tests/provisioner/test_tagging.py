"""Per-provider tag rules: lowercase-only labels and length limits (``tagging``)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import TAG_ENGINE, TAG_NODE, TAG_OWNER, NodeRequest, new_node_id
from dispatcher.provisioner.errors import CloudRequestError
from dispatcher.provisioner.libcloud import LibcloudDriver
from dispatcher.provisioner.tagging import GCE, PERMISSIVE, rules_for
from pdcommon.errors import ConfigError
from pdcommon.settings import LibcloudSiteSettings

TEMPLATE = AgentTemplate(amqp_uri="amqp://u:p@broker.example:5672/%2F", sysname="Sys1")
_LABEL = re.compile(r"^[a-z0-9_-]{0,63}$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class StrictLabelsDriver:
    """A Libcloud-like ``NodeDriver`` that, like GCE, refuses names and labels with
    uppercase letters, dots or more than 63 characters, and keeps the labels."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []

    def create_node(
        self, name: str, size: Any, image: Any, ex_metadata: Any = None, ex_labels: Any = None
    ) -> Any:
        from libcloud.compute.base import Node
        from libcloud.compute.types import NodeState

        if not _NAME.match(name):
            raise CloudRequestError(f"Invalid value for field 'resource.name': {name!r}")
        for key, value in (ex_labels or {}).items():
            if not _LABEL_KEY.match(key) or not _LABEL.match(value):
                raise CloudRequestError(f"Invalid label {key!r}={value!r}")
        node = Node(
            id=uuid.uuid4().hex[:12],
            name=name,
            state=NodeState.RUNNING,
            public_ips=[],
            private_ips=["10.0.0.9"],
            driver=self,
            extra={"labels": dict(ex_labels or {}), "metadata": {"items": [], "fingerprint": "x"}},
        )
        self.nodes.append(node)
        return node

    def list_nodes(self) -> list[Any]:
        return list(self.nodes)

    def destroy_node(self, node: Any) -> bool:
        self.nodes.remove(node)
        return True


def test_gce_labels_and_names_are_accepted_and_read_back_exactly() -> None:
    site = LibcloudSiteSettings(
        provider="gce", image="debian-12", size="e2-small", tags={"team": "Science.Ops"}
    )
    cloud = StrictLabelsDriver()
    owner = "MySys." + "process_dispatcher_with_a_long_service_name" * 2
    driver = LibcloudDriver(site, template=TEMPLATE, owner=owner, connection=cloud)
    request = NodeRequest(new_node_id("Big.Engine"), "Big.Engine", slots=2, replicas=1, heartbeat=5)
    # When a node of an engine with uppercase letters and a dot is created
    node = driver.create_node(request)
    # Then the provider got a valid name and valid labels (the strict driver accepted them)
    (stored,) = cloud.nodes
    assert _NAME.match(stored.name)
    assert all(_LABEL.match(value) for value in stored.extra["labels"].values())
    # And the node is listed with its exact node id and engine, by this owner only
    (listed,) = driver.list_nodes()
    assert (listed.node_id, listed.engine_id, listed.provider_id) == (
        request.node_id,
        "Big.Engine",
        node.provider_id,
    )
    other = LibcloudDriver(site, template=TEMPLATE, owner=owner + "x", connection=cloud)
    assert other.list_nodes() == []
    # And a new driver (a restarted dispatcher) finds it too, and destroys it
    again = LibcloudDriver(site, template=TEMPLATE, owner=owner, connection=cloud)
    (found,) = again.list_nodes()
    assert found.node_id == request.node_id
    again.destroy_node(request.node_id, found.provider_id)
    assert cloud.nodes == []


@pytest.mark.parametrize("key", ["Team", "_team", "9team", "t" * 64])
def test_an_extra_tag_key_the_provider_refuses_is_a_configuration_error(key: str) -> None:
    site = LibcloudSiteSettings(provider="gce", image="i", size="s", tags={key: "x"})
    with pytest.raises(ConfigError, match="cannot be a gce tag"):
        LibcloudDriver(site, template=TEMPLATE, owner="pd", connection=StrictLabelsDriver())


def test_provider_names_pick_their_rules() -> None:
    assert rules_for("gce") is GCE and rules_for("GCE") is GCE
    assert rules_for("ec2").value_limit == 256
    assert rules_for("some-new-cloud") is PERMISSIVE


def test_a_value_too_long_is_shortened_uniquely_and_does_not_decode() -> None:
    first = GCE.encode_text("a" * 80 + "1", 63)
    second = GCE.encode_text("a" * 80 + "2", 63)
    assert len(first) == len(second) == 63 and first != second
    assert GCE.decode_text(first) is None
    assert GCE.decode({TAG_OWNER: first, TAG_NODE: "pd-x"}) == {TAG_NODE: "pd-x"}
    long_ec2 = rules_for("ec2").encode({TAG_ENGINE: "e" * 300})[TAG_ENGINE]
    assert len(long_ec2) == 256


@given(st.text(max_size=40))
def test_gce_encoding_is_valid_and_reversible(text: str) -> None:
    encoded = GCE.encode_text(text, 10_000)
    assert re.fullmatch(r"[a-z0-9_-]*", encoded)
    assert GCE.decode_text(encoded) == text


@given(st.text(min_size=1, max_size=200))
def test_gce_values_always_fit_63_characters(text: str) -> None:
    encoded = GCE.encode_text(text, 63)
    assert len(encoded) <= 63 and re.fullmatch(r"[a-z0-9_-]*", encoded)


@pytest.mark.parametrize("node_id", ["pd-engine1-0a1b2c3d4e", "pd-Big_Engine-0a1b", "9-x"])
def test_gce_node_names_are_valid(node_id: str) -> None:
    assert _NAME.match(GCE.node_name(node_id))
