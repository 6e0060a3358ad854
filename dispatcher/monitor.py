"""The heartbeat monitor: marks silent eeagents WARNING, then MISSING.

It applies to resources whose engine sets both ``heartbeat_warning`` (W) and
``heartbeat_missing`` (M) (every engine by default: docs/architecture.md, decision
3). With ``T = M - W`` and ``age = now - last_heartbeat`` (the agent's timestamp,
capped at receipt):

* **OK**: ``age >= W`` → ``WARNING``, remembering the heartbeat seen and when;
  next check ``now + T``. Otherwise next check at ``last_heartbeat + W``.
* **WARNING**: ``age < W`` → ``OK``. A heartbeat different from the remembered one
  (a new but still old one) restarts the clock. ``T`` seconds, as observed here,
  without any new heartbeat → ``MISSING``, and the resource is evacuated: its
  processes move on by restart mode (exit state ``850-FAILED``) and their
  ``node_exclusive`` tags are released.
* **MISSING**: ``age < W`` → ``OK``; ``age < M`` → ``WARNING``; otherwise, if it
  still holds assignments, it is evacuated again (recovery after a crash). It is
  re-checked every ``heartbeat_period`` so that heartbeats handled by another
  dispatcher instance (whose writes raise no local store event) are noticed.
* **DISABLED** is final: not monitored. Neither is a resource without a heartbeat
  time (every resource a heartbeat registered has one).

A resource is checked when it is first seen, whenever its record changes, and when
its next check falls due; nothing else. The monitor writes a state only over the
record version it judged, so a heartbeat landing meanwhile is never overwritten:
the changed record is simply judged again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.engines import EngineRegistry
from dispatcher.evacuation import Evacuation
from dispatcher.model import Resource
from dispatcher.store.base import Store
from pdcommon.settings import EngineSettings
from pdcommon.states import ExecutionResourceState

__all__ = ["ResourceMonitor"]

log = logging.getLogger(__name__)

_OK = ExecutionResourceState.OK
_WARNING = ExecutionResourceState.WARNING
_MISSING = ExecutionResourceState.MISSING
_DISABLED = ExecutionResourceState.DISABLED


class ResourceMonitor:
    """Judges eeagent health from their heartbeat times; driven by the doctor.

    Not thread-safe: one caller (the doctor's loop) calls :meth:`check`.

    Args:
        store: where resources live.
        engines: gives each resource's heartbeat thresholds (by its ``engine``
            property).
        evacuation: moves the processes of MISSING resources on.
        clock: returns the current time in epoch seconds.
    """

    def __init__(
        self,
        store: Store,
        engines: EngineRegistry,
        evacuation: Evacuation,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.engines = engines
        self.evacuation = evacuation
        self.clock = clock
        self._seen: dict[str, int] = {}
        self._due: dict[str, float] = {}
        self._warnings: dict[str, tuple[str | None, float]] = {}

    def reset(self) -> None:
        """Forget everything (a new doctor term): every resource is judged afresh."""
        self._seen.clear()
        self._due.clear()
        self._warnings.clear()

    def check(self) -> float | None:
        """Judge every resource that is new, changed or due.

        Returns:
            Seconds until the next check falls due (``0.0`` if one is due now), or
            ``None`` when no check is scheduled.
        """
        now = self.clock()
        present: set[str] = set()
        for resource in self.store.list_resources():
            rid = resource.resource_id
            present.add(rid)
            due = self._due.get(rid)
            if self._seen.get(rid) == resource.version and (due is None or due > now):
                continue
            self._seen[rid] = resource.version
            due = self._judge(resource, now)
            if due is None:
                self._due.pop(rid, None)
            else:
                self._due[rid] = due
        for gone in set(self._seen) - present:
            self._forget(gone)
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - now)

    # -- judging ------------------------------------------------------------------------

    def _judge(self, resource: Resource, now: float) -> float | None:
        """Apply the rules of the module docstring; return the next check time."""
        rid = resource.resource_id
        engine = self._engine(resource)
        last = _epoch(resource.last_heartbeat)
        if (
            resource.state == _DISABLED
            or engine is None
            or engine.heartbeat_warning is None
            or engine.heartbeat_missing is None
            or last is None
        ):
            self._warnings.pop(rid, None)
            return None
        warning, missing = engine.heartbeat_warning, engine.heartbeat_missing
        grace = missing - warning
        age = now - last
        if resource.state == _OK:
            if age < warning:
                return last + warning
            if not self._write_state(resource, _WARNING):
                return now
            log.warning("eeagent %s: no heartbeat for %.1f s: WARNING", rid, age)
            self._warnings[rid] = (resource.last_heartbeat, now)
            return now + grace
        if resource.state == _WARNING:
            if age < warning:
                return self._recovered(resource, now, last + warning)
            remembered = self._warnings.get(rid)
            if remembered is None or remembered[0] != resource.last_heartbeat:
                self._warnings[rid] = (resource.last_heartbeat, now)
                return now + grace
            if now - remembered[1] < grace:
                return remembered[1] + grace
            if not self._write_state(resource, _MISSING):
                return now
            log.warning("eeagent %s: no heartbeat for %.1f s: MISSING, evacuating it", rid, age)
            self._warnings.pop(rid, None)
            self._evacuate(resource)
            return now + engine.heartbeat_period
        if resource.state == _MISSING:
            if age < warning:
                return self._recovered(resource, now, last + warning)
            if age < missing:
                if not self._write_state(resource, _WARNING):
                    return now
                log.warning("eeagent %s: heartbeats resumed, still old: WARNING", rid)
                self._warnings[rid] = (resource.last_heartbeat, now)
                return now + grace
            if resource.assigned:
                self._evacuate(resource)
            return now + engine.heartbeat_period
        return None

    def _recovered(self, resource: Resource, now: float, next_check: float) -> float:
        previous = resource.state
        if not self._write_state(resource, _OK):
            return now
        log.info("eeagent %s: heartbeats are back: OK (was %s)", resource.resource_id, previous)
        self._warnings.pop(resource.resource_id, None)
        return next_check

    def _write_state(self, resource: Resource, state: str) -> bool:
        """Store ``state`` over exactly the version judged; False if it changed meanwhile."""
        resource.state = state
        try:
            self.store.update_resource(resource)
        except (WriteConflictError, NotFoundError):
            return False  # judged again on the next check (its version changed)
        self._seen[resource.resource_id] = resource.version
        return True

    def _evacuate(self, resource: Resource) -> None:
        self.evacuation.evacuate_resource(resource, update_node_exclusive=True)
        current = self.store.get_resource(resource.resource_id)
        if current is not None:
            self._seen[current.resource_id] = current.version

    def _engine(self, resource: Resource) -> EngineSettings | None:
        engine_id = resource.properties.get("engine")
        if not isinstance(engine_id, str):
            return None
        engine = self.engines.get(engine_id)
        if engine is None:
            self.engines.merge_stored(self.store.list_engines())
            engine = self.engines.get(engine_id)
        return engine

    def _forget(self, resource_id: str) -> None:
        self._seen.pop(resource_id, None)
        self._due.pop(resource_id, None)
        self._warnings.pop(resource_id, None)


def _epoch(stamp: str | None) -> float | None:
    """A stored ``last_heartbeat`` in epoch seconds (naive text counts as UTC)."""
    if stamp is None:
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
