"""The wall clock stepping forward or back (NTP, a wrong manual setting, a VM resumed):
leases run on the boot clock, waiting jobs keep their delays."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from node.queue import store as store_module
from node.queue.store import JobState, JobStore

HOUR = 3600.0


class Wall:
    """time.time() of the store module, under the test's control."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = time.time
        monkeypatch.setattr(store_module.time, "time", lambda: real() + self.offset)


class Boot:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = store_module.boot_clock
        if real()[0] is None:
            pytest.skip("no boot clock here")

        def clock() -> tuple[str | None, float]:
            boot_id, now = real()
            return boot_id, now + self.offset

        monkeypatch.setattr(store_module, "boot_clock", clock)


def test_a_forward_step_does_not_hand_a_running_workers_jobs_to_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall, boot = Wall(monkeypatch), Boot(monkeypatch)
    with JobStore(tmp_path) as store:
        job = store.enqueue("deliver", {}, destination="pacs", dedup_key="1")
        assert [j.id for j in store.claim("worker-0", lease_seconds=300)] == [job]
        wall.offset = HOUR  # NTP steps the clock an hour ahead mid-C-STORE
        assert store.claim("worker-1", lease_seconds=300) == []  # was: taken, sent twice
        boot.offset = 301  # the lease has really run out (its worker is stuck or gone)
        [taken] = store.claim("worker-1", lease_seconds=300)
        assert taken.id == job and taken.lease_owner == "worker-1"


def test_a_lease_taken_before_a_reboot_ends_on_the_wall_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = Wall(monkeypatch)
    with JobStore(tmp_path) as store:
        job = store.enqueue("deliver", {}, destination="pacs", dedup_key="1")
        store.claim("drain@h:1", lease_seconds=300)
        store._db.execute("UPDATE jobs SET lease_boot_id='another boot', lease_boot=1e12")
        assert store.claim("worker-1", lease_seconds=300) == []
        wall.offset = 301
        assert [j.id for j in store.claim("worker-1", lease_seconds=300)] == [job]


def test_a_backward_step_keeps_retry_and_quiet_delays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = Wall(monkeypatch)
    with JobStore(tmp_path) as store:
        failed = store.enqueue("deliver", {}, destination="pacs", dedup_key="1")
        store.claim("w", kinds=["deliver"])
        store.retry(failed, time.time() + 2, "peer busy")
        study = store.enqueue("study_complete", {}, dedup_key="1.2", not_before=time.time() + 30)
        assert store.claim("w") == []
        wall.offset = -HOUR  # the clock is set back an hour
        assert store.claim("w") == []  # not due yet: the delays stand
        wall.offset = -HOUR + 3  # was: due only an hour later
        assert [j.id for j in store.claim("w", kinds=["deliver"])] == [failed]
        wall.offset = -HOUR + 31
        assert [j.id for j in store.claim("w", kinds=["study_complete"])] == [study]
        assert store.get(failed).state == JobState.CLAIMED  # type: ignore[union-attr]
