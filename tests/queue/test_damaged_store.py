"""A damaged job store (garbage page, garbage header, truncated file): salvaged at the
start of the process holding the state lock, reported in one line everywhere else."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from node import cli
from node.queue.store import DB_NAME, JobState, JobStore
from node.service import NodeService
from tests.node.helpers import queue_only_config

JOBS = 2000


def _store_with_jobs(state: Path) -> None:
    with JobStore(state) as store, store.transaction():
        for n in range(JOBS):
            store.enqueue("deliver", {"path": f"/a/{n}.dcm" + "x" * 200}, dedup_key=str(n))
        store.bump("delivered", 7)
    # Everything in the main file (no -wal), as after a clean stop.
    with sqlite3.connect(state / DB_NAME) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _damage(path: Path, how: str) -> None:
    with open(path, "r+b") as fh:
        if how == "page":
            fh.seek(4096 * 20)
            fh.write(os.urandom(4096))
        elif how == "header":
            fh.write(os.urandom(100))
        else:
            fh.truncate(4096 * 10)


def test_a_garbage_page_is_salvaged_keeping_the_readable_jobs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _store_with_jobs(state)
    _damage(state / DB_NAME, "page")
    with JobStore(state) as plain:  # without repair (queue, status): the error shows
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            plain.select(limit=JOBS)
        assert plain.damaged is not None
    with JobStore(state, repair=True) as store:
        assert store.salvaged_from is not None and store.salvaged_from.exists()
        assert store.salvaged_from.name.startswith(f"{DB_NAME}.damaged-")
        kept = store.select(limit=JOBS)
        assert JOBS - 100 < len(kept) < JOBS  # one page of jobs lost, no more
        assert {j.state for j in kept} == {JobState.QUEUED}
        assert store.counters() == {"delivered": 7}
        assert store._damage() is None
        new = store.enqueue("deliver", {"path": "/b.dcm"}, dedup_key="new")
        assert new > max(j.id for j in kept)  # ids are never reused
        assert store.enqueue("deliver", {}, dedup_key=kept[0].dedup_key) == kept[0].id
    with JobStore(state, repair=True) as again:  # healthy now: left as it is
        assert again.salvaged_from is None


@pytest.mark.parametrize("how", ["header", "truncated"])
def test_an_unreadable_store_is_set_aside_and_a_new_one_begun(tmp_path: Path, how: str) -> None:
    state = tmp_path / "state"
    _store_with_jobs(state)
    _damage(state / DB_NAME, how)
    with JobStore(state, repair=True) as store:
        assert store.salvaged_from is not None
        store.enqueue("deliver", {"path": "/b.dcm"}, dedup_key="new")
        assert len(store.select()) == 1


def test_queue_commands_report_a_damaged_store_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    _store_with_jobs(tmp_path / "state")
    _damage(tmp_path / "state" / DB_NAME, "page")
    config = tmp_path / "node.toml"
    config.write_text('[node]\nstate_dir = "state"\n')
    assert (
        cli.main(["queue", "list", "-c", str(config), "--state", "queued", "--limit", str(JOBS)])
        == 1
    )
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "database disk image is malformed" in errors[0]
    assert "dicom-node run` salvages it" in errors[0]
    assert "Traceback" not in capsys.readouterr().err


def test_the_node_salvages_at_start_and_stops_when_damage_appears_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node import service

    monkeypatch.setattr(service, "HEARTBEAT_SECONDS", 0.05)
    cfg = queue_only_config(tmp_path)
    _store_with_jobs(cfg.node.state_dir)
    _damage(cfg.node.state_dir / DB_NAME, "header")
    node = NodeService(cfg)
    assert node.store.salvaged_from is not None
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(node.run_forever()))
    monkeypatch.setattr(service.signal, "signal", lambda *a: None)  # not the main thread
    runner.start()
    try:
        assert node.stop_event.wait(0.5) is False  # running
        node.store.damaged = "database disk image is malformed"  # seen by some stage
        runner.join(30)
    finally:
        node.stop_event.set()
        runner.join(30)
    assert result == [1]  # systemd (Restart=on-failure) starts it again, which salvages
