"""``bench/scaling.py``'s teardown: every node it started is destroyed, all at once."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import ModuleType

import pytest

from dispatcher.provisioner.base import ProvidedNode
from dispatcher.provisioner.errors import TransientCloudError

SCALING = Path(__file__).resolve().parents[2] / "bench" / "scaling.py"


def scaling() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scaling", SCALING)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SlowStoppingDriver:
    """Each destroy lasts until every node's destroy has begun (or fails)."""

    def __init__(self, count: int, failing: str | None = None) -> None:
        self.nodes = [ProvidedNode(f"node{index}", f"node{index}") for index in range(count)]
        self.all_stopping = threading.Barrier(count, timeout=30)
        self.failing = failing
        self.destroyed: list[str] = []
        self.closed = False
        self._lock = threading.Lock()

    def list_nodes(self) -> list[ProvidedNode]:
        return list(self.nodes)

    def destroy_node(self, node_id: str, provider_id: str | None) -> None:
        self.all_stopping.wait()  # a node stopped after another breaks the barrier
        if node_id == self.failing:
            raise TransientCloudError(f"cannot stop {node_id}")
        with self._lock:
            self.destroyed.append(node_id)

    def close(self) -> None:
        self.closed = True


def test_the_nodes_are_stopped_together_not_one_after_another() -> None:
    # Given three nodes whose agents each take a while to stop
    driver = SlowStoppingDriver(3)
    # When the bench tears its pool down
    scaling().destroy_all(driver)
    # Then each node's stop began before any other one ended, and every node is gone
    assert sorted(driver.destroyed) == ["node0", "node1", "node2"]
    assert driver.closed


def test_a_node_that_cannot_be_stopped_does_not_keep_the_others_running() -> None:
    driver = SlowStoppingDriver(3, failing="node0")
    with pytest.raises(TransientCloudError):
        scaling().destroy_all(driver)
    assert sorted(driver.destroyed) == ["node1", "node2"]
    assert driver.closed


def test_an_empty_pool_only_closes_the_driver() -> None:
    driver = SlowStoppingDriver(1)
    driver.nodes = []
    scaling().destroy_all(driver)
    assert driver.destroyed == [] and driver.closed
