"""The delivery worker with a fake sender (no sockets): job states, retries, dead, stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from node.config import Config, Destination, QueueSection
from node.errors import SendError
from node.queue.store import Job, JobState, JobStore
from node.send import status as st
from node.send.contexts import SendItem
from node.send.scu import Report
from node.send.status import Outcome
from node.send.worker import DeliveryWorker, enqueue_delivery, read_header
from tests.send.data import native_sc
from tests.send.peers import until

DEST = Destination(name="pacs", host="127.0.0.1", port=1)


class FakeSender:
    """Answers each item with ``answer(item)``; records what was sent."""

    def __init__(self, answer: Callable[[SendItem], Outcome | None]) -> None:
        self.answer = answer
        self.sent: list[str] = []

    def send(
        self, items: Sequence[SendItem], report: Report, stop: Callable[[], bool] | None = None
    ) -> None:
        for item in items:
            if stop is not None and stop():
                return
            outcome = self.answer(item)
            if outcome is None:  # "the association died": leave the rest unreported
                return
            self.sent.append(item.sop_instance_uid)
            report(item, outcome)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "state", durable=False)


def _cfg(**queue: object) -> Config:
    q = {"retry_jitter": 0.0, "retry_initial_seconds": 2.0, **queue}
    return Config(queue=QueueSection(**q), destinations=[DEST])  # type: ignore[arg-type]


def _files(tmp_path: Path, n: int) -> list[Path]:
    return [native_sc(tmp_path / f"f{i}.dcm") for i in range(n)]


def _worker(store: JobStore, sender: FakeSender, cfg: Config | None = None, **kw: object):
    return DeliveryWorker(cfg or _cfg(), DEST, store, owner="t", sender=sender, **kw)  # type: ignore[arg-type]


def test_enqueue_is_idempotent_and_reads_the_header(tmp_path: Path, store: JobStore) -> None:
    [f] = _files(tmp_path, 1)
    ids = enqueue_delivery(store, f, ["pacs", "other"], source="ingest", extra={"origin": "x.jpg"})
    assert enqueue_delivery(store, f, ["pacs", "other"]) == ids
    job = store.get(ids[0])
    assert job is not None and job.kind == "deliver" and job.destination == "pacs"
    header = read_header(f)
    assert job.dedup_key == header["sop_instance_uid"]
    assert job.payload == {
        "path": str(f.absolute()),
        **header,
        "source": "ingest",
        "origin": "x.jpg",
    }


def test_enqueue_refuses_a_non_dicom_file(tmp_path: Path, store: JobStore) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(SendError, match="not a DICOM file"):
        enqueue_delivery(store, bad, ["pacs"])
    assert store.pending() == 0


def test_success_acks_counts_and_calls_back(tmp_path: Path, store: JobStore) -> None:
    for f in _files(tmp_path, 3):
        enqueue_delivery(store, f, ["pacs"])
    delivered: list[Job] = []
    w = _worker(store, FakeSender(lambda i: st.DELIVERED), on_delivered=delivered.append)
    assert w.run_once() == 3
    assert [j.state for j in store.select()] == [JobState.DONE] * 3
    assert store.counters()["delivered"] == 3
    assert len(delivered) == 3
    assert w.run_once() == 0


def test_warning_is_delivered_with_the_warning_kept(tmp_path: Path, store: JobStore) -> None:
    [f] = _files(tmp_path, 1)
    [jid] = enqueue_delivery(store, f, ["pacs"])
    _worker(store, FakeSender(lambda i: st.classify_status(0xB000, "coerced"))).run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.DONE
    assert "0xB000" in (job.last_error or "") and "coerced" in (job.last_error or "")


def test_out_of_resources_three_times_then_success(tmp_path: Path, store: JobStore) -> None:
    [f] = _files(tmp_path, 1)
    [jid] = enqueue_delivery(store, f, ["pacs"])
    answers = [0xA700, 0xA700, 0xA700, 0x0000]
    clock = Clock()
    sender = FakeSender(lambda i: st.classify_status(answers.pop(0)))
    w = _worker(store, sender, clock=clock)
    delays = []
    for _ in range(3):
        assert w.run_once() == 1
        job = store.get(jid)
        assert (
            job is not None and job.state == JobState.RETRY and "0xA700" in (job.last_error or "")
        )
        delays.append(job.next_attempt_at - clock.now)
        assert w.run_once() == 0  # not due yet
        clock.now = job.next_attempt_at
        store._db.execute("UPDATE jobs SET next_attempt_at=0 WHERE id=?", (jid,))
    assert delays == [2.0, 4.0, 8.0]  # exponential backoff
    assert w.run_once() == 1
    job = store.get(jid)
    assert job is not None and job.state == JobState.DONE and job.attempts == 4
    assert len(sender.sent) == 4


def test_cannot_understand_is_dead_with_the_reason(tmp_path: Path, store: JobStore) -> None:
    [f] = _files(tmp_path, 1)
    [jid] = enqueue_delivery(store, f, ["pacs"])
    dead: list[Job] = []
    w = _worker(store, FakeSender(lambda i: st.classify_status(0xC000, "bad")), on_dead=dead.append)
    w.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.DEAD
    assert job.last_error == 'peer status 0xC000 (Cannot understand) "bad"'
    assert store.counters()["delivery_failed"] == 1
    assert [j.id for j in dead] == [jid]
    assert w.run_once() == 0  # never retried


def test_gives_up_after_max_attempts(tmp_path: Path, store: JobStore) -> None:
    [f] = _files(tmp_path, 1)
    [jid] = enqueue_delivery(store, f, ["pacs"])
    w = _worker(store, FakeSender(lambda i: st.retry("refused")), _cfg(max_attempts=2))
    w.run_once()
    store._db.execute("UPDATE jobs SET next_attempt_at=0")
    w.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.DEAD
    assert "refused" in (job.last_error or "") and "max_attempts = 2" in (job.last_error or "")


def test_missing_file_is_dead_without_sending(tmp_path: Path, store: JobStore) -> None:
    [f] = _files(tmp_path, 1)
    [jid] = enqueue_delivery(store, f, ["pacs"])
    f.unlink()
    sender = FakeSender(lambda i: st.DELIVERED)
    _worker(store, sender).run_once()
    job = store.get(jid)
    assert (
        job is not None and job.state == JobState.DEAD and "file is gone" in (job.last_error or "")
    )
    assert sender.sent == []


def test_a_file_whose_folder_is_away_is_retried_not_dead(tmp_path: Path, store: JobStore) -> None:
    """The folder itself gone (a share or mount away): retried with the queue's backoff,
    then sent once it is back; a file gone from a folder that is there stays dead (above)."""
    share = tmp_path / "share"
    share.mkdir()
    [f] = _files(share, 1)
    [jid] = enqueue_delivery(store, f, ["pacs"])
    share.rename(tmp_path / "unmounted")
    sender = FakeSender(lambda i: st.DELIVERED)
    w = _worker(store, sender)
    w.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.RETRY and sender.sent == []
    assert "is not there" in (job.last_error or "")
    (tmp_path / "unmounted").rename(share)
    store._db.execute("UPDATE jobs SET next_attempt_at=0")
    w.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.DONE and len(sender.sent) == 1


def test_file_unavailable_errors() -> None:
    import errno

    gone = Path("/nonexistent-dir/a.dcm")
    assert st.file_unavailable(gone).verdict is st.Verdict.RETRY
    stale = OSError(errno.ESTALE, "Stale file handle")
    assert st.file_unavailable(Path("/tmp/a.dcm"), stale).verdict is st.Verdict.RETRY
    denied = PermissionError(errno.EACCES, "Permission denied")
    outcome = st.file_unavailable(Path("/tmp/a.dcm"), denied)
    assert outcome.verdict is st.Verdict.DEAD and "Permission denied" in outcome.reason


def test_unstarted_jobs_are_released_without_counting_the_attempt(
    tmp_path: Path, store: JobStore
) -> None:
    for f in _files(tmp_path, 4):
        enqueue_delivery(store, f, ["pacs"])
    answers: list[Outcome | None] = [st.DELIVERED, st.retry("aborted"), None]
    _worker(store, FakeSender(lambda i: answers.pop(0))).run_once()
    states = [(j.state, j.attempts) for j in store.select()]
    assert states == [
        (JobState.DONE, 1),
        (JobState.RETRY, 1),
        (JobState.QUEUED, 0),
        (JobState.QUEUED, 0),
    ]


def test_run_stops_gracefully_and_releases_the_rest(tmp_path: Path, store: JobStore) -> None:
    for f in _files(tmp_path, 5):
        enqueue_delivery(store, f, ["pacs"])
    stop = threading.Event()

    def answer(item: SendItem) -> Outcome:
        if len(sender.sent) == 1:
            stop.set()  # SIGTERM arrives while the second C-STORE is in flight
        return st.DELIVERED

    sender = FakeSender(answer)
    w = _worker(store, sender)
    w.run(stop)
    states = [j.state for j in store.select()]
    assert states == [JobState.DONE, JobState.DONE] + [JobState.QUEUED] * 3
    assert store.counters()["delivered"] == 2


def test_only_its_own_destination(tmp_path: Path, store: JobStore) -> None:
    [f] = _files(tmp_path, 1)
    enqueue_delivery(store, f, ["elsewhere"])
    assert _worker(store, FakeSender(lambda i: st.DELIVERED)).run_once() == 0


def test_a_slow_batch_keeps_its_lease(tmp_path: Path, store: JobStore) -> None:
    for f in _files(tmp_path, 3):
        enqueue_delivery(store, f, ["pacs"])
    seen: list[float | None] = []

    def answer(item: SendItem) -> Outcome:
        time.sleep(0.02)  # lease 0.03 s, renewed every 0.01 s
        seen.append(max(j.lease_expires or 0 for j in store.select(state=JobState.CLAIMED)))
        return st.DELIVERED

    w = _worker(store, FakeSender(answer), _cfg(lease_seconds=0.03))
    assert w.run_once() == 3
    assert seen[1] is not None and seen[0] is not None and seen[1] > seen[0]


def test_heartbeat_name_is_stable_across_restarts(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted node's worker replaces the old heartbeat instead of adding one per pid.

    The service names owners "<pid>-<n>" and `queue drain` "drain@<host>:<pid>"; status
    showed one "NOT RUNNING" line per past process for ever.
    """
    import node.send.worker as worker_module

    for pid in (4242, 5353, 1, 0):  # a node restarted, also as a container's pid 1
        monkeypatch.setattr(worker_module.os, "getpid", lambda pid=pid: pid)
        for owner in (f"{pid}-0", f"{pid}-1", f"drain@host:{pid}"):
            w = DeliveryWorker(_cfg(), DEST, store, owner=owner, sender=FakeSender(lambda i: None))
            store.heartbeat(w.component)
    names = set(store.heartbeats())
    assert names == {"deliver:pacs:0", "deliver:pacs:1", "deliver:pacs:drain@host"}


def test_acks_a_full_state_disk_refused_are_written_later_not_resent(
    tmp_path: Path, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PACS acknowledged, the "done" commit failed (disk full): the acks stay pending
    and are written by the next round, instead of the jobs waiting out their lease (300 s)
    and the objects being sent again."""
    import sqlite3

    for f in _files(tmp_path, 3):
        enqueue_delivery(store, f, ["pacs"])
    real_ack = store.ack
    failures = [sqlite3.OperationalError("database or disk is full")]

    def ack(job_ids, *, note=None, owner=None):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return real_ack(job_ids, note=note, owner=owner)

    monkeypatch.setattr(store, "ack", ack)
    sender = FakeSender(lambda i: st.DELIVERED)
    w = _worker(store, sender)
    with pytest.raises(sqlite3.OperationalError):
        w.run_once()
    assert [j.state for j in store.select()] == [JobState.CLAIMED] * 3
    w.run_once()  # the disk has room again
    assert [j.state for j in store.select()] == [JobState.DONE] * 3
    assert store.counters()["delivered"] == 3
    assert len(sender.sent) == 3  # each object sent once


def test_unstarted_jobs_are_released_when_the_acks_cannot_be_written(
    tmp_path: Path, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    for f in _files(tmp_path, 3):
        enqueue_delivery(store, f, ["pacs"])

    def ack(job_ids, *, note=None, owner=None):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "ack", ack)
    answers: list[Outcome | None] = [st.DELIVERED, None]  # then the association dies
    with pytest.raises(sqlite3.OperationalError):
        _worker(store, FakeSender(lambda i: answers.pop(0))).run_once()
    assert [j.state for j in store.select()] == [JobState.CLAIMED] + [JobState.QUEUED] * 2


def test_a_long_batch_keeps_the_worker_alive_in_status(
    tmp_path: Path, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 objects to a slow PACS take minutes: the worker beat only between batches, so
    `dicom-node status` showed it NOT RUNNING while it was sending. Its keep-alive beats
    while one C-STORE is still under way."""
    from node.queue import keepalive

    monkeypatch.setattr(keepalive, "HEARTBEAT_SECONDS", 0.01)
    for f in _files(tmp_path, 2):
        enqueue_delivery(store, f, ["pacs"])

    def slow_pacs(item: SendItem) -> Outcome:
        # the first C-STORE does not end before the worker has beaten meanwhile
        until(lambda: "deliver:pacs:t" in store.heartbeats(), timeout=10)
        return Outcome(st.Verdict.DELIVERED, "ok")

    worker = _worker(store, FakeSender(slow_pacs))
    assert worker.run_once() == 2


def test_a_lease_lost_mid_batch_records_nothing_and_starts_nothing_more(
    tmp_path: Path,
    store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The process was frozen past its lease (SIGSTOP, a VM paused) and another worker
    claimed the batch: this one neither acks the object it was sending (the other worker
    holds it) nor starts the rest of the batch."""
    from tests.queue.test_clock import Boot

    boot = Boot(monkeypatch)
    for f in _files(tmp_path, 3):
        enqueue_delivery(store, f, ["pacs"])

    def frozen_then_delivered(item: SendItem) -> Outcome:
        if not store.claim_owners() - {"t"}:
            boot.offset += 60  # frozen for a minute: the lease (10 s) ran out
            assert len(store.claim("other", destination="pacs", limit=3, lease_seconds=10)) == 3
            # the keep-alive finds out at its next renewal
            until(lambda: "lease of job" in caplog.text, timeout=10)
        return st.DELIVERED

    sender = FakeSender(frozen_then_delivered)
    w = _worker(store, sender, _cfg(lease_seconds=0.3))
    with caplog.at_level("INFO"):
        w.run_once()
    assert len(sender.sent) == 1  # the rest of the batch was not started
    assert {j.state for j in store.select()} == {JobState.CLAIMED}
    assert {j.lease_owner for j in store.select()} == {"other"}
    assert store.counters().get("delivered", 0) == 0
    assert "delivery not recorded as done" in caplog.text
    # one ERROR per lost job: the keep-alive's; the outcome not recorded is only noted
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3 and all("lease of job" in m for m in errors), errors
