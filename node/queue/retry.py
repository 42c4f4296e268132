"""The retry policy: when to try a failed job again, and when to give up. Pure functions.

Backoff is exponential from ``queue.retry_initial_seconds`` by ``queue.retry_multiplier``,
capped at ``queue.retry_max_seconds``, with a symmetric jitter of ``queue.retry_jitter``
(0.2 = +-20 %) so that many jobs failing together do not hammer the PACS in lockstep.
A job gives up after ``queue.max_attempts`` attempts (0 = unlimited) or once it is older
than ``queue.max_age_seconds`` (0 = unlimited), whichever comes first.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from node.config import QueueSection

log = logging.getLogger(__name__)


def backoff_seconds(
    attempts: int, policy: QueueSection, rand: Callable[[], float] = random.random
) -> float:
    """Delay before the next attempt after ``attempts`` (>= 1) failed ones, jitter included."""
    exponent = max(attempts - 1, 0)
    base = policy.retry_initial_seconds
    cap = max(policy.retry_max_seconds, 0.0)
    try:
        delay = base * policy.retry_multiplier**exponent
    except OverflowError:
        delay = cap
    delay = min(delay, cap)
    jitter = min(max(policy.retry_jitter, 0.0), 1.0)
    delay *= 1.0 + jitter * (2.0 * rand() - 1.0)
    return max(min(delay, cap), 0.0)


def next_attempt(
    attempts: int,
    created_at: float,
    now: float,
    policy: QueueSection,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Epoch time of the next attempt, or ``None`` when the job should go dead.

    ``attempts`` counts the attempts made so far (the store increments it on claim);
    ``created_at`` is when the job was enqueued.
    """
    if policy.max_attempts > 0 and attempts >= policy.max_attempts:
        return None
    at = now + backoff_seconds(attempts, policy, rand)
    if policy.max_age_seconds > 0 and at - created_at > policy.max_age_seconds:
        return None
    return at


def give_up_reason(attempts: int, created_at: float, now: float, policy: QueueSection) -> str:
    """Why :func:`next_attempt` said no, for the dead job's reason."""
    if policy.max_attempts > 0 and attempts >= policy.max_attempts:
        return f"gave up after {attempts} attempts (queue.max_attempts = {policy.max_attempts})"
    age = now - created_at
    return (
        f"gave up after {attempts} attempts over {age:.0f} s "
        f"(queue.max_age_seconds = {policy.max_age_seconds:.0f})"
    )
