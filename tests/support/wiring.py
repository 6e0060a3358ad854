"""The daemon's object graph for unit tests, one state machine per dispatcher.

:meth:`dispatcher.service.DispatcherService.build` builds one
:class:`~dispatcher.transitions.ProcessStateMachine` and passes it to every
component; these helpers do the same for tests that build a component or two
over a fake store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dispatcher.core import ProcessDispatcherCore
from dispatcher.doctor import Doctor
from dispatcher.engines import EngineRegistry
from dispatcher.evacuation import Evacuation
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.matchmaker import Matchmaker
from dispatcher.messaging import Messenger
from dispatcher.registration import Registration
from dispatcher.store.base import Store
from dispatcher.transitions import ProcessStateMachine


@dataclass
class Health:
    """The collaborators the heartbeat handler and the doctor share."""

    transitions: ProcessStateMachine
    evacuation: Evacuation
    registration: Registration


def health_parts(
    store: Store,
    messenger: Messenger,
    engines: EngineRegistry,
    *,
    clock: Callable[[], float] = time.time,
    transitions: ProcessStateMachine | None = None,
) -> Health:
    """The state machine (unless given), evacuation and registration over ``store``."""
    if transitions is None:
        transitions = ProcessStateMachine(store, messenger, clock=clock)
    evacuation = Evacuation(store, transitions)
    return Health(transitions, evacuation, Registration(store, engines, evacuation, clock=clock))


def make_core(
    store: Store,
    messenger: Messenger,
    *,
    clock: Callable[[], float] = time.time,
    transitions: ProcessStateMachine | None = None,
    **kwargs: Any,
) -> ProcessDispatcherCore:
    """A core with its own state machine (unless given)."""
    if transitions is None:
        transitions = ProcessStateMachine(store, messenger, clock=clock)
    return ProcessDispatcherCore(store, messenger, transitions=transitions, **kwargs)


def make_heartbeats(
    store: Store,
    messenger: Messenger,
    engines: EngineRegistry,
    *,
    clock: Callable[[], float] = time.time,
    parts: Health | None = None,
    **kwargs: Any,
) -> HeartbeatHandler:
    """A heartbeat handler with its own collaborators (unless ``parts`` are given)."""
    if parts is None:
        parts = health_parts(store, messenger, engines, clock=clock)
    return HeartbeatHandler(
        store,
        messenger,
        engines,
        transitions=parts.transitions,
        registration=parts.registration,
        clock=clock,
        **kwargs,
    )


def make_doctor(
    store: Store,
    messenger: Messenger,
    engines: EngineRegistry,
    handler: HeartbeatHandler,
    **kwargs: Any,
) -> Doctor:
    """A doctor sharing ``handler``'s state machine and evacuation, as the daemon's do."""
    return Doctor(
        store,
        messenger,
        engines,
        transitions=handler.transitions,
        evacuation=handler.registration.evacuation,
        **kwargs,
    )


def make_matchmaker(
    store: Store,
    messenger: Messenger,
    engines: EngineRegistry,
    *,
    clock: Callable[[], float] = time.time,
    transitions: ProcessStateMachine | None = None,
    **kwargs: Any,
) -> Matchmaker:
    """A matchmaker with its own state machine (unless given)."""
    if transitions is None:
        transitions = ProcessStateMachine(store, messenger, clock=clock)
    return Matchmaker(store, messenger, engines, transitions=transitions, clock=clock, **kwargs)
