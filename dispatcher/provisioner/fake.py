"""In-memory stand-ins for tests: :class:`FakeDriver` and :class:`InlineExecutor`.

:class:`FakeDriver` keeps its nodes in a dict, records every call, can be told to
fail the next calls of an operation with a given error, to be slow, or to lose a
node (as a cloud would when someone terminates it by hand). It behaves like a
tagging provider: :meth:`FakeDriver.list_nodes` returns the nodes it holds, so a
new provisioner over the same driver adopts them.

:class:`InlineExecutor` runs submitted calls at once in the caller's thread, which
makes a provisioner pass deterministic.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

from dispatcher.provisioner.base import NodeRequest, ProvidedNode
from dispatcher.provisioner.errors import NodeNotFoundError, ProvisionerError

__all__ = ["FakeDriver", "InlineExecutor"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class FakeDriver:
    """A thread-safe, in-memory driver; see the module docstring.

    Args:
        site: the site name written on its nodes.
        latency: seconds every create and destroy call takes.
        clock: returns epoch seconds (``created_at`` of nodes).

    Attributes:
        calls: ``(operation, node_id)`` of every call, in order (``("list", "")``).
        created: the request of every successful create.
    """

    kind = "fake"
    provisions = True

    def __init__(
        self, site: str = "default", *, latency: float = 0.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.site = site
        self.latency = latency
        self.clock = clock
        self.calls: list[tuple[str, str]] = []
        self.created: list[NodeRequest] = []
        self._nodes: dict[str, ProvidedNode] = {}
        self._failures: dict[str, deque[ProvisionerError]] = defaultdict(deque)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.closed = False

    def __repr__(self) -> str:
        return f"FakeDriver(site={self.site!r}, nodes={len(self._nodes)})"

    # -- test controls --------------------------------------------------------------

    def fail_next(self, operation: str, error: ProvisionerError, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` (create, destroy, list) raise."""
        with self._lock:
            self._failures[operation].extend([error] * times)

    def vanish(self, node_id: str) -> None:
        """Lose a node, as if it were terminated outside the dispatcher."""
        with self._lock:
            self._nodes.pop(node_id, None)

    def add_existing(self, node_id: str, engine_id: str | None, provider_id: str = "") -> None:
        """Hold a node created earlier (by a previous dispatcher, or a lost create)."""
        with self._lock:
            self._nodes[node_id] = ProvidedNode(
                node_id=node_id,
                provider_id=provider_id or f"fake-{next(self._ids)}",
                engine_id=engine_id,
                site=self.site,
                created_at=self.clock(),
            )

    @property
    def node_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def count(self, operation: str) -> int:
        """How many calls of ``operation`` were made."""
        with self._lock:
            return sum(1 for op, _ in self.calls if op == operation)

    # -- Driver ---------------------------------------------------------------------

    def _call(self, operation: str, node_id: str) -> None:
        with self._lock:
            self.calls.append((operation, node_id))
            failures = self._failures[operation]
            error = failures.popleft() if failures else None
        if self.latency and operation != "list":
            time.sleep(self.latency)
        if error is not None:
            raise error

    def create_node(self, request: NodeRequest) -> ProvidedNode:
        self._call("create", request.node_id)
        node = ProvidedNode(
            node_id=request.node_id,
            provider_id=f"fake-{next(self._ids)}",
            engine_id=request.engine_id,
            site=self.site,
            properties={"hostname": f"{request.node_id}.fake"},
            created_at=self.clock(),
        )
        with self._lock:
            self._nodes[request.node_id] = node
            self.created.append(request)
        return node

    def destroy_node(self, node_id: str, provider_id: str | None) -> None:
        self._call("destroy", node_id)
        with self._lock:
            if self._nodes.pop(node_id, None) is None:
                raise NodeNotFoundError(f"node {node_id} not found")

    def list_nodes(self) -> list[ProvidedNode]:
        self._call("list", "")
        with self._lock:
            return list(self._nodes.values())

    def close(self) -> None:
        self.closed = True


class InlineExecutor(Executor):
    """Runs each submitted call immediately, in the submitting thread."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the future, as a pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing runs in the background."""

    def __repr__(self) -> str:
        return "InlineExecutor()"
