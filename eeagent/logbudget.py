"""The disk budget for the log files of ended rounds.

An ended round keeps its record, and so its program and log files, until the
dispatcher's ``cleanup``. With a dispatcher that is gone or slow, ended rounds
(a crash loop makes one every few seconds) would pile up on disk without limit,
so each agent keeps their logs within a budget (``eeagent.ended_logs_max_bytes``
and ``eeagent.ended_logs_max_age``; issue 14):

1. an ended round whose end is at least ``max_age`` seconds old loses its log files;
2. then, oldest end first, ended rounds lose their log files until the total size
   of the ended rounds' logs is at most ``max_bytes``.

Live rounds are never counted nor touched (their output is bounded by rotation,
see :mod:`eeagent.supdconf`). A round that lost its files keeps its record and the
tail of its output captured when it ended (``ProcessRecord.output``), which its
heartbeat entry and ``get_process_logs`` go on answering with.

:func:`plan_drops` is the pure policy; the agent measures the files, applies the
plan through :meth:`~eeagent.control.ProcessControl.drop_logs` and logs each drop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pdcommon.settings import DEFAULT_ENDED_LOGS_MAX_AGE, DEFAULT_ENDED_LOGS_MAX_BYTES

__all__ = ["CHECK_INTERVAL", "DropReason", "EndedLogs", "LogBudget", "LogDrop", "plan_drops"]

#: Seconds between two checks of the budget from the poll loop (a round that ends
#: triggers one at once): a check stats every file of every ended round.
CHECK_INTERVAL = 5.0

DropReason = Literal["age", "size"]


@dataclass(frozen=True)
class LogBudget:
    """How much of the disk the logs of an agent's ended rounds may take.

    Attributes:
        max_bytes: the most bytes the ended rounds' log files may take together.
        max_age: seconds an ended round keeps its log files at most.

    Raises:
        ValueError: a limit is not a positive (finite) number.
    """

    max_bytes: int = DEFAULT_ENDED_LOGS_MAX_BYTES
    max_age: float = DEFAULT_ENDED_LOGS_MAX_AGE

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int):
            raise ValueError(f"max_bytes must be an integer, not {self.max_bytes!r}")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be greater than 0, not {self.max_bytes}")
        if not math.isfinite(self.max_age) or self.max_age <= 0:
            raise ValueError(f"max_age must be a positive number of seconds, not {self.max_age}")


@dataclass(frozen=True)
class EndedLogs:
    """The log files of one ended round that still has them.

    Attributes:
        name: the program name.
        ended_at: when the round ended (epoch seconds).
        size: bytes its log files take.
    """

    name: str
    ended_at: float
    size: int


@dataclass(frozen=True)
class LogDrop:
    """A decision: ``name`` loses its log files, because of ``reason``."""

    name: str
    reason: DropReason
    size: int


def plan_drops(ended: Iterable[EndedLogs], now: float, budget: LogBudget) -> list[LogDrop]:
    """Which ended rounds lose their log files, and why (see the module docstring).

    Rounds whose files are empty are left alone: dropping them frees nothing.
    Rounds that ended at the same time go in the order given.

    Returns:
        The drops, those for age first, then those for size, oldest end first.
    """
    drops: list[LogDrop] = []
    kept: list[EndedLogs] = []
    for logs in ended:
        if logs.size <= 0:
            continue
        if now - logs.ended_at >= budget.max_age:
            drops.append(LogDrop(logs.name, "age", logs.size))
        else:
            kept.append(logs)
    total = sum(logs.size for logs in kept)
    for logs in sorted(kept, key=lambda item: item.ended_at):
        if total <= budget.max_bytes:
            break
        drops.append(LogDrop(logs.name, "size", logs.size))
        total -= logs.size
    return drops
