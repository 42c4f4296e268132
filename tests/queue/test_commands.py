"""``dicom-node queue`` against a state directory that holds no job store."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.queue import JobState, JobStore


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "--state", "dead"],
        ["show", "1"],
        ["retry"],
        ["purge", "--state", "done"],
        ["drain", "--dest", "a"],
    ],
)
def test_no_job_store_is_an_error_not_an_empty_queue(
    tmp_path: Path, argv: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A mistyped -c or base_dir must not read as "the queue is empty" (nor create a DB)."""
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        '[node]\nstate_dir = "nowhere/state"\n'
        '[[destinations]]\nname = "a"\nhost = "127.0.0.1"\nport = 104\n'
    )
    assert main(["queue", *argv, "-c", str(cfg)]) == 2
    assert "no job store at" in caplog.text and "-c FILE" in caplog.text
    assert not (tmp_path / "nowhere").exists()


def _store_with_jobs(tmp_path: Path) -> tuple[Path, list[int]]:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nstate_dir = "state"\n')
    with JobStore(tmp_path / "state") as store:
        ids = [
            store.enqueue("export_instance", {"path": "/a.dcm"}, dedup_key="1"),
            store.enqueue("deliver", {"path": "/b.dcm"}, destination="pacs", dedup_key="2"),
        ]
        store.dead(ids[0], "gone")
    return cfg, ids


def test_retry_of_an_unknown_id_is_an_error_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, (dead, _) = _store_with_jobs(tmp_path)
    assert main(["queue", "retry", str(dead), "99999", "-c", str(cfg)]) == 2
    assert "no job with id 99999: nothing re-armed" in caplog.text
    with JobStore(tmp_path / "state") as store:
        assert store.get(dead).state == JobState.DEAD  # type: ignore[union-attr]


def test_list_filters_limit_and_wide_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = _store_with_jobs(tmp_path)
    assert main(["queue", "list", "--dest", "nope", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out == "no job matches --kind/--dest\n"  # not "empty"
    assert main(["queue", "list", "-c", str(cfg)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    column = header.index("destination")
    assert all(row[column - 1] == " " for row in rows)  # export_instance fits its column
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit) as exited:
            main(["queue", "list", "--state", "dead", "--limit", bad, "-c", str(cfg)])
        assert exited.value.code == 2
        assert "--limit: " in capsys.readouterr().err


def test_a_store_locked_by_another_process_is_named_as_such_and_still_listed(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another connection keeping a write transaction open (a `sqlite3` shell, a hung
    process): `queue retry` said "is node.state_dir the node's state folder? a damaged
    store is salvaged ..." (advice to treat a healthy queue as damaged) and `queue list`
    failed though reading needs no lock. Now list reads the last committed state and retry
    names the lock."""
    import sqlite3

    cfg, _ = _store_with_jobs(tmp_path)
    monkeypatch.setattr("node.queue.store.BUSY_SECONDS", 0.2, raising=False)
    holder = sqlite3.connect(tmp_path / "state" / "queue.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        assert main(["queue", "list", "-c", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "export_instance" in out and "deliver" in out
        assert main(["queue", "retry", "-c", str(cfg)]) == 2
    finally:
        holder.close()
    assert "another process held a write transaction" in caplog.text
    assert "damaged" not in caplog.text
