"""Polling a condition: the tests' one way to wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["WaitFor", "wait_for", "waiter"]

#: The default ``timeout`` of :func:`wait_for` (seconds).
TIMEOUT = 10.0
#: The default ``interval`` between two looks (seconds).
INTERVAL = 0.05


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = TIMEOUT,
    what: str = "",
    interval: float = INTERVAL,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that.

    Fails the test (``AssertionError`` naming ``what`` and the last value) when
    ``timeout`` seconds pass first. An exception of a ``retry_on`` type raised by
    ``predicate`` counts as a falsy answer (e.g. a server restarting).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except retry_on as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}: last {last!r}"
            )
        time.sleep(interval)


class WaitFor(Protocol):
    def __call__(
        self,
        predicate: Callable[[], Any],
        timeout: float = ...,
        what: str = ...,
        interval: float = ...,
    ) -> Any: ...


def waiter(
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    retry_on: tuple[type[BaseException], ...] = (),
) -> WaitFor:
    """:func:`wait_for` with other defaults (a test module's usual timeout)."""

    def wait(
        predicate: Callable[[], Any],
        timeout: float = timeout,
        what: str = "",
        interval: float = interval,
    ) -> Any:
        return wait_for(predicate, timeout, what, interval, retry_on)

    return wait
