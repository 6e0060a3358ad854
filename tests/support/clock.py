"""The fake clock of the unit tests: a callable returning a time the test sets."""

from __future__ import annotations

__all__ = ["NOW", "FakeClock"]

#: The epoch seconds a :class:`FakeClock` starts at unless told otherwise.
NOW = 1_700_000_000.0


class FakeClock:
    """A clock tests move by hand: ``clock()`` is ``clock.now``, epoch seconds."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
