"""The node service's stage threads: a stage that crashes is started again."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from node import service
from node.config import config_from_dict
from node.service import NodeService
from tests.node.helpers import ended_pid, queue_only_config


def test_a_crashed_stage_is_restarted_until_the_node_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "RESTART_MIN_SECONDS", 0.01)
    node = NodeService(config_from_dict({"node": {"base_dir": str(tmp_path)}}, tmp_path))
    runs: list[int] = []
    second_run = threading.Event()

    def stage() -> None:
        runs.append(1)
        if len(runs) < 3:  # e.g. a heartbeat commit on a full disk
            raise OSError(28, "No space left on device")
        second_run.set()
        node.stop_event.wait()

    node._thread("flaky", stage)
    assert second_run.wait(10), f"the stage ran {len(runs)} time(s) and was not restarted"
    node.stop_event.set()
    node.threads[0].join(10)
    assert not node.threads[0].is_alive()
    assert len(runs) == 3
    node.store.close()


def test_start_leaves_the_claims_of_a_running_drain_alone(tmp_path: Path) -> None:
    """A node started while `queue drain` runs took back the drain's claimed jobs, and both
    sent them. Only claims of processes that are gone are requeued now."""
    import os

    from node.queue.owners import drain_owner
    from node.queue.store import JobState, JobStore

    cfg = queue_only_config(tmp_path)
    dead_pid = ended_pid()
    with JobStore(cfg.node.state_dir) as store:
        ids = [
            store.enqueue("deliver", {"n": n}, destination="pacs", dedup_key=str(n))
            for n in range(3)
        ]
        store.claim(drain_owner(os.getpid()), limit=1)  # a drain that runs (this process)
        store.claim(drain_owner(dead_pid), limit=1)  # a drain killed meanwhile
        store.claim(f"{dead_pid}-0", limit=1)  # the previous node's worker
    node = NodeService(cfg)
    node.start()
    try:
        states = [node.store.get(i).state for i in ids]  # type: ignore[union-attr]
    finally:
        node.stop(timeout=5)
    assert states == [JobState.CLAIMED, JobState.QUEUED, JobState.QUEUED]


def test_start_forgets_the_heartbeats_of_ended_processes(tmp_path: Path) -> None:
    """A destination renamed, fewer workers or the SCP disabled since the last run: their
    components must not stay "NOT RUNNING" in `dicom-node status` for ever. A process that
    still lives (e.g. a `queue drain` next to the node) keeps its heartbeat."""
    import os

    cfg = queue_only_config(tmp_path)
    gone_pid = ended_pid()
    node = NodeService(cfg)
    with node.store.transaction() as db:
        for name, pid in (
            ("deliver:oldpacs:0", gone_pid),
            ("scp", gone_pid),
            ("deliver:pacs:drain", os.getppid()),
        ):
            db.execute(
                "INSERT INTO heartbeats(component, pid, seen_at, detail) VALUES (?, ?, 0, '')",
                (name, pid),
            )
    node.start()
    try:
        names = set(node.store.heartbeats())
    finally:
        node.stop(timeout=5.0)
    assert "deliver:oldpacs:0" not in names and "scp" not in names
    assert "deliver:pacs:drain" in names


def test_start_names_deliveries_waiting_for_a_destination_no_longer_configured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A destination removed (or renamed) in the config while jobs were queued for it: no
    worker claims them and nothing said so; they waited for ever in silence."""
    from node.queue.store import JobStore

    cfg = queue_only_config(tmp_path)
    with JobStore(cfg.node.state_dir) as store:
        for n in range(3):
            store.enqueue("deliver", {"n": n}, destination="old-pacs", dedup_key=str(n))
        done = store.enqueue("deliver", {"n": 9}, destination="gone-too", dedup_key="9")
        store.ack([done])  # nothing waits for this one
    node = NodeService(cfg)
    node.start()
    node.stop(timeout=5)
    warnings = [
        r.getMessage() for r in caplog.records if "not in [[destinations]]" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "3 delivery job(s) wait for destination 'old-pacs'" in warnings[0]
