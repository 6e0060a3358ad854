"""Launch requests to eeagents, and their retry schedule.

The matchmaker fires ``launch_process(u_pid, round, run_type, parameters)`` to the
eeagent a process was assigned to. A launch is fire-and-forget, so a lost one is
re-sent every ``dispatch_retry_seconds`` while the process stays ``350-ASSIGNED``
in the same round: every period, where the legacy system waited twice that after
the first retry (docs/architecture.md, decision 6). :class:`DispatchRetries` keeps
that schedule in memory; a new leadership term rebuilds it from the stored ASSIGNED processes.
"""

from __future__ import annotations

import heapq
import logging
from typing import Any, Final

from dashi.errors import TransportError
from dashi.jsontree import tree_copy
from dispatcher.messaging import Messenger
from dispatcher.model import Process

__all__ = ["LAUNCH_OP", "DispatchRetries", "fire_launch", "launch_parameters"]

log = logging.getLogger(__name__)

#: The eeagent operation that starts a process.
LAUNCH_OP: Final = "launch_process"

_Key = tuple[str, int]


def launch_parameters(process: Process, run_type: str) -> Any:
    """The ``parameters`` of a launch request for ``run_type``.

    * ``supd``: the definition's ``executable`` as stored;
    * ``pyon`` / ``pyon_single``: ``name``, ``module``, ``cls``, ``module_uri`` and,
      when there is one, ``config``: the configuration at round 0, and from round 1
      on a copy with ``process.start_mode = "RESTART"``;
    * anything else: ``{}`` (logged).

    Args:
        process: the process being launched.
        run_type: the configured ``launch_type``.
    """
    executable = (process.definition or {}).get("executable")
    if run_type == "supd":
        return tree_copy(executable)
    if run_type in ("pyon", "pyon_single"):
        spec = executable if isinstance(executable, dict) else {}
        parameters: dict[str, Any] = {
            "name": process.name,
            "module": spec.get("module"),
            "cls": spec.get("class"),
            "module_uri": spec.get("url"),
        }
        if process.round == 0:
            if process.configuration:
                parameters["config"] = tree_copy(process.configuration)
        else:
            config = tree_copy(process.configuration) if process.configuration else {}
            if not isinstance(config, dict):
                config = {}
            if not isinstance(config.get("process"), dict):
                config["process"] = {}
            config["process"]["start_mode"] = "RESTART"
            parameters["config"] = config
        return parameters
    log.warning("unknown launch_type %r: launching %s with no parameters", run_type, process.upid)
    return {}


def fire_launch(messenger: Messenger, process: Process, resource_id: str, run_type: str) -> bool:
    """Send the launch request of ``process`` to the eeagent ``resource_id``.

    A transport failure is logged, not raised: the retry schedule re-sends it.

    Returns:
        Whether the message was handed to the broker.
    """
    try:
        messenger.fire(
            resource_id,
            LAUNCH_OP,
            u_pid=process.upid,
            round=process.round,
            run_type=run_type,
            parameters=launch_parameters(process, run_type),
        )
    except TransportError as exc:
        log.warning(
            "could not launch %s round %d on %s (will retry): %s",
            process.upid,
            process.round,
            resource_id,
            exc,
        )
        return False
    return True


class DispatchRetries:
    """When each launched ``(upid, round)`` is due to be re-sent.

    Args:
        period: ``dispatch_retry_seconds``; ``None`` or ``0`` disables retries (then
            :meth:`track` does nothing).
    """

    def __init__(self, period: float | None) -> None:
        self.period = period if period else None
        self._due: dict[_Key, float] = {}
        self._heap: list[tuple[float, _Key]] = []

    @property
    def enabled(self) -> bool:
        return self.period is not None

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self) -> dict[_Key, float]:
        """Every tracked key and when it is due (a copy)."""
        return dict(self._due)

    def track(self, key: _Key, sent_at: float) -> None:
        """Re-send ``key`` one period after ``sent_at`` (unless it moves on)."""
        if self.period is None:
            return
        self.track_at(key, sent_at + self.period)

    def track_at(self, key: _Key, due: float) -> None:
        """Re-send ``key`` at ``due``."""
        if self.period is None:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))

    def forget(self, key: _Key) -> None:
        self._due.pop(key, None)

    def clear(self) -> None:
        self._due.clear()
        self._heap.clear()

    def next_due(self) -> float | None:
        """The earliest due time, or ``None`` when nothing is tracked."""
        while self._heap:
            due, key = self._heap[0]
            if self._due.get(key) == due:
                return due
            heapq.heappop(self._heap)  # superseded or forgotten
        return None

    def pop_due(self, now: float) -> list[_Key]:
        """Remove and return the keys due at ``now``, earliest first."""
        due_keys = []
        while self._heap and self._heap[0][0] <= now:
            due, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                due_keys.append(key)
        return due_keys
