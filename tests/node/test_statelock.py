"""Two node processes on one state directory: the second refuses, the first keeps its work."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.errors import AlreadyRunning
from node.queue import JobState, JobStore
from node.statelock import StateLock
from tests.node.test_node_e2e import (
    DICOM_NODE,
    NodeProcess,
    node_factory,  # noqa: F401 - fixture
    wait_for,
    write_config,
)
from tests.peers import free_port


def test_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    first = StateLock(tmp_path, "dicom-node run")
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning, match=r"pid \d+ \(dicom-node run\)"):
            StateLock(tmp_path, "dicom-node receive").acquire()
    finally:
        first.release()
    with StateLock(tmp_path, "dicom-node receive"):  # free again once released
        pass


@pytest.mark.slow
def test_second_node_on_the_same_state_refuses_and_takes_nothing(
    tmp_path: Path,
    node_factory: Callable[[Path], NodeProcess],  # noqa: F811
) -> None:
    config = write_config(tmp_path, None, free_port(), ingest="enabled = false")
    first = node_factory(config)
    first.start()
    wait_for("the first node", lambda: first.status()["components"].get("node", {}).get("alive"))
    # A job the first node is working on right now (claimed, lease running).
    with JobStore(tmp_path / "state") as store:
        job_id = store.enqueue("deliver", {"path": "x.dcm"}, destination="pacs", dedup_key="1.2")
        (claimed,) = store.claim("first-node-0", kinds=["deliver"], lease_seconds=600)
        assert claimed.id == job_id

    for command in (["run", "-c", str(config)], ["receive", "--config", str(config)]):
        second = subprocess.run([DICOM_NODE, *command], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "another dicom-node process" in second.stderr
        assert f"pid {first.proc.pid if first.proc else 0} (dicom-node run)" in second.stderr

    with JobStore(tmp_path / "state") as store:
        job = store.get(job_id)
        assert job is not None and job.state == JobState.CLAIMED
        assert job.lease_owner == "first-node-0"
    assert first.proc is not None and first.proc.poll() is None

    # A killed node leaves no stale lock: the next one starts and recovers the claim.
    first.kill()
    second_node = node_factory(config)
    second_node.start()

    def requeued() -> bool:
        with JobStore(tmp_path / "state") as store:
            job = store.get(job_id)
        return job is not None and job.state == JobState.QUEUED

    wait_for("the job requeued by the new node", requeued, timeout=60)
    time.sleep(0.5)
    assert second_node.proc is not None and second_node.proc.poll() is None
    assert second_node.stop() == 0
