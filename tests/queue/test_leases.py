"""Leases of long jobs: renewed by the keep-alive, never recorded by a worker that lost them.

Time is the test's: the boot clock (leases) is moved by :class:`Boot`, the keep-alive's own
clock is a fake, and its rounds are run with :meth:`KeepAlive.tick`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from node.queue.keepalive import KeepAlive
from node.queue.store import JobState, JobStore
from tests.queue.test_clock import Boot


class Ticks:
    """The keep-alive's monotonic clock, under the test's control."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path, durable=False)


def _claimed(store: JobStore, owner: str, lease_seconds: float = 300) -> int:
    """One delivery job, claimed by ``owner``; its id."""
    job = store.enqueue("deliver", {}, destination="pacs", dedup_key="1")
    [claimed] = store.claim(owner, lease_seconds=lease_seconds)
    assert claimed.id == job
    return job


def _taken_over(store: JobStore, boot: Boot, job: int) -> None:
    """The first worker was frozen past its lease; "other" claims the job."""
    boot.offset += 301
    [taken] = store.claim("other", lease_seconds=300)
    assert taken.id == job


def test_a_worker_cannot_record_a_job_another_worker_holds_now(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ack/retry/dead/release used to change the job whoever held it: the frozen worker's
    late ack marked done a job the other worker was sending (or its retry pulled it from
    under it)."""
    boot = Boot(monkeypatch)
    job = _claimed(store, "frozen")
    _taken_over(store, boot, job)

    assert store.ack([job], owner="frozen") == []
    assert store.retry(job, 0.0, "aborted", owner="frozen") is False
    assert store.dead(job, "0xC000", owner="frozen") is False
    store.release([job], owner="frozen")
    held = store.get(job)
    assert held is not None and held.state == JobState.CLAIMED and held.lease_owner == "other"

    assert store.ack([job], owner="other") == [job]  # the holder records it
    assert store.get(job).state == JobState.DONE  # type: ignore[union-attr]


def test_an_expired_lease_nobody_took_is_still_its_workers(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = Boot(monkeypatch)
    job = _claimed(store, "slow")
    boot.offset += 301
    assert store.extend_lease([job], "slow", 300) == [job]
    assert store.claim("other", lease_seconds=300) == []
    assert store.ack([job], owner="slow") == [job]


def test_the_lease_is_renewed_after_a_third_of_it_not_on_every_round(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = Boot(monkeypatch)
    job = _claimed(store, "w", 30)
    renewals: list[list[int]] = []
    extend = store.extend_lease

    def counting(ids: list[int], owner: str, lease: float) -> list[int]:
        renewals.append(list(ids))
        return extend(ids, owner, lease)

    monkeypatch.setattr(store, "extend_lease", counting)
    ticks = Ticks()
    keep = KeepAlive(store, "w", 30.0, clock=ticks)
    keep.hold([job])
    for _ in range(9):  # 9 s: under a third of the lease, nothing written
        ticks.now += 1
        keep.tick()
    assert renewals == []
    for step in range(1, 5):  # four times a third of the lease: 40 s > 30 s
        ticks.now += 10
        boot.offset += 10
        keep.tick()
        assert len(renewals) == step
        assert store.claim("other", lease_seconds=30) == []  # still held
    keep.drop([job])  # decided: no more renewals
    ticks.now += 60
    keep.tick()
    assert len(renewals) == 4


def test_a_busy_runner_beats_for_its_component(store: JobStore) -> None:
    ticks = Ticks()
    keep = KeepAlive(store, "w", 300.0, "export-0", beat_seconds=2.0, clock=ticks)
    keep.tick()
    assert "export-0" not in store.heartbeats()
    ticks.now += 2
    keep.tick()
    assert "export-0" in store.heartbeats()


def test_a_lost_lease_is_found_and_logged_once(
    store: JobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    boot = Boot(monkeypatch)
    kept = store.enqueue("deliver", {}, destination="a", dedup_key="1")
    lost = store.enqueue("deliver", {}, destination="b", dedup_key="2")
    store.claim("frozen", limit=2, lease_seconds=300)
    ticks = Ticks()
    keep = KeepAlive(store, "frozen", 300.0, clock=ticks)
    keep.hold([kept, lost])
    boot.offset += 301
    [taken] = store.claim("other", destination="b", lease_seconds=300)
    assert taken.id == lost
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            ticks.now += 100
            keep.tick()
    assert keep.lost == {lost} and keep.is_lost(lost) and not keep.is_lost(kept)
    lines = [r.getMessage() for r in caplog.records if "lease of job" in r.getMessage()]
    assert len(lines) == 1 and f"job {lost} lost (now claimed by other)" in lines[0]
    assert store.get(kept).lease_owner == "frozen"  # type: ignore[union-attr]
