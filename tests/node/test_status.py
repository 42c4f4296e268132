"""``dicom-node status`` from another shell: queue depth, errors, counters, liveness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node import cli
from node.queue import JobStore


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nbase_dir = "{tmp_path}"\n')
    return config


def test_status_reports_backlog_errors_counters_and_liveness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    store = JobStore(tmp_path / "var" / "state")
    store.enqueue("deliver", {"path": "/x.dcm"}, destination="pacs", dedup_key="1.2.1")
    dead = store.enqueue("deliver", {"path": "/y.dcm"}, destination="pacs", dedup_key="1.2.2")
    store.claim("w", destination="pacs", limit=2)
    store.dead(dead, "0xC000: cannot understand")
    store.bump("ingested", 2)
    store.heartbeat("watcher")
    store.close()

    assert cli.main(["status", "-c", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pending"] == 1
    assert report["queue"]["deliver"]["pacs"] == {"claimed": 1, "dead": 1}
    assert report["counters"] == {"ingested": 2}
    assert report["components"]["watcher"]["alive"] is True
    assert report["recent_errors"][0]["error"] == "0xC000: cannot understand"

    assert cli.main(["status", "-c", str(config)]) == 0
    text = capsys.readouterr().out
    assert "watcher    alive" in text
    assert "deliver          pacs         claimed=1, dead=1" in text
    assert "0xC000: cannot understand" in text


def test_status_of_a_node_that_never_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "-c", str(write_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "(none has run yet)" in out
    assert "does not exist: no node has run with this config" in out
    assert not (tmp_path / "var").exists()  # status reads; it never creates a store


def test_status_of_an_unusable_state_dir_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "var" / "state").mkdir(parents=True)
    (tmp_path / "var" / "state" / "queue.sqlite3").write_bytes(b"not a database" * 20)
    assert cli.main(["status", "-c", str(write_config(tmp_path))]) == 2
    assert "queue.sqlite3: file is not a database" in caplog.text
    assert "Traceback" not in caplog.text
