"""Transitions of a :class:`~dispatcher.model.VM` record, as pure functions.

Each function changes the record it is given and returns True, or returns False
when the record is not in a state the transition applies to (nothing to write).
:class:`~dispatcher.provisioner.manager.Provisioner` applies them through its
conflict-retrying update, so a transition is re-checked on the fresh record.
"""

from __future__ import annotations

from dispatcher.model import VM
from dispatcher.provisioner.base import ProvidedNode, VMState

__all__ = [
    "WAITING",
    "created",
    "failed_attempt",
    "orphan_found",
    "retry_later",
    "set_state",
    "to_final",
    "to_pending",
    "to_terminating",
]

#: States whose next driver call waits for ``next_attempt``.
WAITING = (VMState.REQUESTED, VMState.TERMINATING)


def set_state(vm: VM, state: str, now: float) -> bool:
    """Move to ``state`` (attempt count and backoff restart)."""
    if vm.state == state:
        return False
    vm.state = state
    vm.state_time = now
    vm.attempts = 0
    vm.next_attempt = 0.0
    return True


def to_pending(vm: VM, node: ProvidedNode, now: float) -> bool:
    """A requested node that exists at the provider is pending."""
    if vm.state != VMState.REQUESTED:
        return False
    vm.provider_id = node.provider_id
    vm.properties = dict(node.properties)
    return set_state(vm, VMState.PENDING, now)


def created(vm: VM, node: ProvidedNode, now: float) -> bool:
    """``create_node`` returned: pending, or (cancelled meanwhile) terminating."""
    vm.provider_id = node.provider_id
    vm.properties = dict(node.properties)
    if vm.state == VMState.REQUESTED:
        return set_state(vm, VMState.PENDING, now)
    if vm.state in VMState.FINAL:
        return to_terminating(vm, vm.state, vm.reason or "cancelled", now)
    return True


def to_terminating(vm: VM, final_state: str, reason: str | None, now: float) -> bool:
    """Destroy the node; once destroyed the record becomes ``final_state``."""
    if vm.state == VMState.TERMINATING:
        return False
    vm.final_state = final_state
    vm.reason = reason
    return set_state(vm, VMState.TERMINATING, now)


def orphan_found(vm: VM, node: ProvidedNode, now: float) -> bool:
    """A node whose record is final still exists: destroy it, keeping the final state."""
    if vm.state not in VMState.FINAL:
        return False
    vm.provider_id = node.provider_id
    return to_terminating(vm, vm.state, f"{vm.reason or vm.state}; found still running", now)


def to_final(vm: VM, state: str | None, reason: str | None, now: float) -> bool:
    """End the record in ``state`` (default: its ``final_state``)."""
    if vm.state in VMState.FINAL:
        return False
    vm.reason = reason if reason is not None else vm.reason
    vm.state = state or vm.final_state
    vm.state_time = now
    vm.next_attempt = 0.0
    return True


def failed_attempt(vm: VM, error: str, state: str, reason: str, now: float) -> bool:
    """A call failed for good: record the error and end in ``state``."""
    vm.last_error = error
    vm.attempts += 1
    return to_final(vm, state, reason, now) or True


def retry_later(vm: VM, error: str, now: float, delay: float) -> bool:
    """A call failed but may succeed later: record the error, back off."""
    vm.last_error = error
    vm.attempts += 1
    vm.next_attempt = now + delay
    return True
