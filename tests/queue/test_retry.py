"""The retry policy: exponential backoff, cap, jitter bounds, max attempts and max age."""

from __future__ import annotations

import pytest

from node.config import QueueSection
from node.queue.retry import backoff_seconds, give_up_reason, next_attempt

POLICY = QueueSection(
    retry_initial_seconds=2.0,
    retry_max_seconds=60.0,
    retry_multiplier=2.0,
    retry_jitter=0.0,
    max_attempts=0,
    max_age_seconds=0,
)


def test_backoff_doubles_then_caps() -> None:
    delays = [backoff_seconds(n, POLICY) for n in range(1, 9)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_huge_attempt_count_does_not_overflow() -> None:
    assert backoff_seconds(10_000, POLICY) == 60.0


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.999])
def test_jitter_stays_within_its_band_and_under_the_cap(r: float) -> None:
    policy = QueueSection(retry_initial_seconds=10, retry_max_seconds=100, retry_jitter=0.2)
    d = backoff_seconds(1, policy, rand=lambda: r)
    assert 8.0 <= d <= 12.0
    assert d == pytest.approx(10 * (1 + 0.2 * (2 * r - 1)))
    assert backoff_seconds(50, policy, rand=lambda: r) <= 100.0


def test_jitter_spreads_jobs_that_failed_together() -> None:
    policy = QueueSection(retry_jitter=0.2)
    values = {backoff_seconds(3, policy, rand=lambda i=i: i / 10) for i in range(10)}
    assert len(values) == 10


def test_next_attempt_is_now_plus_backoff() -> None:
    assert next_attempt(3, created_at=0.0, now=1000.0, policy=POLICY) == 1008.0


def test_max_attempts_gives_up() -> None:
    policy = QueueSection(max_attempts=4, retry_jitter=0.0, max_age_seconds=0)
    assert next_attempt(3, 0.0, 10.0, policy) is not None
    assert next_attempt(4, 0.0, 10.0, policy) is None
    assert "queue.max_attempts = 4" in give_up_reason(4, 0.0, 10.0, policy)


def test_max_age_gives_up_when_the_next_attempt_would_be_too_late() -> None:
    policy = QueueSection(retry_jitter=0.0, max_age_seconds=3600, retry_max_seconds=300)
    assert next_attempt(1, created_at=0.0, now=100.0, policy=policy) == 102.0
    assert next_attempt(20, created_at=0.0, now=3400.0, policy=policy) is None
    assert "queue.max_age_seconds = 3600" in give_up_reason(20, 0.0, 3400.0, policy)


def test_zero_limits_mean_unlimited() -> None:
    assert next_attempt(10_000, created_at=0.0, now=1e9, policy=POLICY) == 1e9 + 60.0
