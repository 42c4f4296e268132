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
