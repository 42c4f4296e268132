"""The generic job runner's log lines say which object a failed job was about."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import QueueSection
from node.jobs import JobRunner, PermanentJobError
from node.queue import Job, JobState, JobStore


def test_failed_job_log_lines_name_the_object_and_its_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = JobStore(tmp_path)
    payload = {"path": "/archive/1.2/1.2.3/1.2.3.4.dcm", "sop_instance_uid": "1.2.3.4"}
    retried = store.enqueue("export_instance", payload, dedup_key="1.2.3.4")
    dead = store.enqueue("study_complete", {"study_uid": "1.2", "archive_dir": "/a/1.2"})

    def transient(job: Job) -> None:
        raise NotADirectoryError(20, "Not a directory", "/export/1.2")

    def permanent(job: Job) -> None:
        raise PermanentJobError("study folder /a/1.2 is gone")

    runner = JobRunner(
        store, {"export_instance": transient, "study_complete": permanent}, QueueSection()
    )
    assert runner.run_once() == 2
    by_job = {r.fields["job"]: r for r in caplog.records if hasattr(r, "fields")}  # type: ignore[attr-defined]
    assert by_job[retried].fields == {"job": retried, **{"sop": "1.2.3.4", "path": payload["path"]}}  # type: ignore[attr-defined]
    assert by_job[dead].fields == {"job": dead, "study": "1.2", "path": "/a/1.2"}  # type: ignore[attr-defined]
    assert store.get(retried).state == JobState.RETRY  # type: ignore[union-attr]
    assert store.get(dead).state == JobState.DEAD  # type: ignore[union-attr]
    store.close()


def test_a_failing_job_store_is_one_log_line_then_quiet_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full or locked state disk: the loop logs one line (no traceback), waits longer each
    time instead of spinning, and says when the store is back."""
    import sqlite3
    import threading

    store = JobStore(tmp_path)
    runner = JobRunner(
        store, {"export_instance": lambda job: None}, QueueSection(), idle_seconds=0.01
    )
    calls = {"claim": 0}
    claim = store.claim
    stop = threading.Event()
    waits: list[float] = []

    def failing_claim(*args: object, **kwargs: object) -> list[Job]:
        calls["claim"] += 1
        if calls["claim"] <= 5:
            raise sqlite3.OperationalError("database or disk is full")
        if calls["claim"] > 6:
            stop.set()
        return claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "claim", failing_claim)
    real_wait = stop.wait
    monkeypatch.setattr(stop, "wait", lambda t=None: waits.append(t or 0) or real_wait(0))
    with caplog.at_level("INFO", logger="node.jobs"):
        runner.run(stop, heartbeat="export-0")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "disk is full" in errors[0].getMessage()
    assert errors[0].exc_info is None
    assert waits[:5] == sorted(waits[:5]) and waits[4] > waits[0]
    assert any("available again" in r.getMessage() for r in caplog.records)
    store.close()


def test_a_long_job_keeps_its_lease_and_its_component_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study PDF of hundreds of images outlasts the lease: the lease was pushed back only
    between jobs, so a second export thread took the same job (two PDFs, two acks), and
    the runner's heartbeat stopped (`status`: NOT RUNNING while it was busy)."""
    import threading

    from node.queue import keepalive
    from tests.send.peers import until

    monkeypatch.setattr(keepalive, "HEARTBEAT_SECONDS", 0.01)
    store = JobStore(tmp_path, durable=False)
    job = store.enqueue("study_complete", {"study_uid": "1.2", "archive_dir": "/a/1.2"})
    runs: list[int] = []
    policy = QueueSection(lease_seconds=0.2)
    other = JobRunner(store, {"study_complete": runs.append}, policy, name="second")

    def long_export(job: Job) -> None:
        runs.append(job.id)
        seen = {store.get(job.id).lease_expires}  # type: ignore[union-attr]

        def renewed_and_beaten() -> bool:
            # meanwhile a second export thread polls for work, as export.workers = 2 does
            other.run_once()
            seen.add(store.get(job.id).lease_expires)  # type: ignore[union-attr]
            return len(seen) > 5 and "export-0" in store.heartbeats()

        # five renewals of a 0.2 s lease: the job has outlasted its lease twice over
        until(renewed_and_beaten, timeout=20)

    runner = JobRunner(store, {"study_complete": long_export}, policy, name="export")
    thread = threading.Thread(target=runner.run_once, args=("export-0",))
    thread.start()
    thread.join(30)
    assert runs == [job]  # run once, by one runner
    assert store.get(job).state == JobState.DONE  # type: ignore[union-attr]
    store.close()


def test_a_runner_that_lost_its_lease_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Frozen past its lease (SIGSTOP, a paused VM), the runner came back and acked a job
    another runner was working on; now the outcome is logged, not recorded."""
    from tests.queue.test_clock import Boot

    boot = Boot(monkeypatch)
    store = JobStore(tmp_path, durable=False)
    job = store.enqueue("export_instance", {"sop_instance_uid": "1.2.3"}, dedup_key="1.2.3")

    def frozen(job: Job) -> None:
        boot.offset += 600
        assert [j.id for j in store.claim("other", lease_seconds=300)] == [job.id]
        raise OSError("export folder unavailable")  # would be retried: pulled from "other"

    runner = JobRunner(store, {"export_instance": frozen}, QueueSection(lease_seconds=300))
    with caplog.at_level("ERROR"):
        assert runner.run_once() == 1
    held = store.get(job)
    assert held is not None and held.state == JobState.CLAIMED and held.lease_owner == "other"
    assert "export_instance job not recorded as retry" in caplog.text
    assert "claimed by other" in caplog.text
    store.close()
