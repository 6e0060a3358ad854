"""The restart policy: exponential backoff between restarts and a limit that gives up.

The restart mode (``NEVER``/``ALWAYS``/``ABNORMAL``) decides *whether* an ended
round is restarted; this module decides *when*, and when to stop trying:

* every restartable end is counted (``Process.failure_times``, those within
  ``interval`` seconds are kept);
* at the ``failure_limit``-th count within ``interval`` the process ends
  ``850-FAILED`` with the reason ``restart limit reached: N failures in S s``;
* otherwise the next round waits ``initial_delay * 2**(n-1)`` seconds (``n`` the
  count), at most ``max_delay``, with ``jitter`` (a fraction of the delay, drawn
  at random either way) so that processes failing together spread out.

The policy of a process is its own ``restart_policy`` (``schedule_process``
argument, any subset of the keys) over its engine's over the dispatcher's
(``processdispatcher.restart_policy``). Pure functions: the caller gives the time
and the random draw.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pdcommon.settings import RestartPolicySettings

__all__ = ["RestartDecision", "decide_restart", "effective_policy", "restart_limit_reason"]

#: Ends kept for the backoff when the policy never gives up.
_KEPT_FOREVER = 100


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """What to do with a restartable end.

    Attributes:
        give_up: the failure limit is reached: end ``850-FAILED``.
        delay: seconds before the next round may start (0: at once).
        failure_times: the counted ends to store (within the interval, this one included).
        reason: the reason to store when giving up.
    """

    give_up: bool
    delay: float
    failure_times: list[float]
    reason: str | None = None


def effective_policy(
    default: RestartPolicySettings,
    engine: RestartPolicySettings | None = None,
    own: Mapping[str, Any] | None = None,
) -> RestartPolicySettings:
    """The policy that applies: ``own`` keys over ``engine`` over ``default``."""
    base = engine if engine is not None else default
    if not own:
        return base
    return base.model_copy(update=dict(own))


def restart_limit_reason(count: int, interval: float) -> str:
    """``restart limit reached: N failures in S s``."""
    return f"restart limit reached: {count} failures in {interval:g} s"


def decide_restart(
    policy: RestartPolicySettings,
    failure_times: list[float],
    now: float,
    draw: Callable[[], float] = random.random,
) -> RestartDecision:
    """Decide a restartable end at ``now`` under ``policy``.

    Args:
        policy: the effective policy.
        failure_times: the process's counted ends so far (epoch seconds).
        now: the end's time.
        draw: a random number in ``[0, 1)`` (for the jitter).
    """
    recent = [t for t in failure_times if now - t < policy.interval] + [now]
    count = len(recent)
    if policy.failure_limit and count >= policy.failure_limit:
        return RestartDecision(True, 0.0, recent, restart_limit_reason(count, policy.interval))
    recent = recent[-(policy.failure_limit or _KEPT_FOREVER) :]
    delay = min(policy.max_delay, policy.initial_delay * 2 ** min(count - 1, 60))
    if delay and policy.jitter:
        delay *= 1 + policy.jitter * (2 * draw() - 1)
    return RestartDecision(False, max(0.0, delay), recent)
