"""``dicom-node status`` from another shell: queue depth, errors, counters, liveness."""

from __future__ import annotations

import json
import os
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

    # degraded (exit 1): a dead job waits for the admin
    assert cli.main(["status", "-c", str(config), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["health"] == "degraded" and report["exit_status"] == 1
    assert report["problems"] == ["1 dead job(s)"]
    assert report["pending"] == 1
    assert report["queue"]["deliver"]["pacs"] == {"claimed": 1, "dead": 1}
    assert report["counters"] == {"ingested": 2}
    assert report["components"]["watcher"]["alive"] is True
    assert report["recent_errors"][0]["error"] == "0xC000: cannot understand"

    assert cli.main(["status", "-c", str(config)]) == 1
    text = capsys.readouterr().out
    assert text.startswith("health: degraded (1 dead job(s))\n")
    assert "watcher    alive" in text
    assert "deliver          pacs         claimed=1, dead=1" in text
    assert "0xC000: cannot understand" in text


def test_status_of_a_node_that_never_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "-c", str(write_config(tmp_path))]) == 3  # LSB: not running
    out = capsys.readouterr().out
    assert out.startswith("health: not running (no state database: no node has run)")
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


def _as_nobody(fn: object) -> dict:
    """Run ``fn()`` in a forked child with the uid/gid of ``nobody`` (as a monitoring
    account that may read the node's state but not write it); its result or error."""
    import pickle
    import pwd

    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result: dict = {"ok": fn()}  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, pickle.dumps(result))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)  # noqa: S301 - our own child


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another user needs root")
@pytest.mark.parametrize("node_running", [False, True])
def test_status_works_for_a_user_who_may_only_read(node_running: bool) -> None:
    """A monitoring account (or an administrator without sudo) that can read the node's
    state folder but not write to it: `status` used to fail, telling them to move the
    database aside, i.e. to throw the queue away. It reads it now, creating no file."""
    import shutil
    import sqlite3
    import tempfile
    import urllib.parse  # noqa: F401 - imported before the fork: the child may not read code

    from node.config import load_config
    from node.status import collect_status

    base = Path(tempfile.mkdtemp(prefix="dicom-node-readonly-", dir="/tmp"))
    try:
        base.chmod(0o755)
        config = write_config(base)
        state = base / "var" / "state"
        store = JobStore(state)
        store.enqueue("deliver", {"path": "/x.dcm"}, destination="pacs", dedup_key="1.2.1")
        store.bump("ingested", 3)
        store.heartbeat("node")
        store.close()
        for path in (base / "var", state, *state.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)  # owned by root: readable only
        writer = None
        if node_running:  # the node holds the store open: its WAL files exist
            writer = sqlite3.connect(state / "queue.sqlite3")
            writer.execute("PRAGMA journal_mode=WAL")
            writer.execute("UPDATE counters SET value = 4 WHERE name = 'ingested'")
            writer.commit()
        before = sorted(p.name for p in state.iterdir())
        cfg = load_config(config)

        answer = _as_nobody(lambda: collect_status(cfg))

        assert "error" not in answer, answer
        report = answer["ok"]
        assert report["pending"] == 1
        assert report["counters"] == {"ingested": 4 if node_running else 3}
        assert sorted(p.name for p in state.iterdir()) == before  # nothing created
        if writer is not None:
            writer.close()
    finally:
        shutil.rmtree(base)


def test_a_store_this_user_may_not_write_is_not_called_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advice for a permission problem is the node's user, never "move it aside"."""
    import sqlite3

    from node.errors import QueueError

    JobStore(tmp_path).close()

    def refused(self: JobStore, durable: bool) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(JobStore, "_open", refused)
    with pytest.raises(QueueError) as info:
        JobStore(tmp_path)
    assert "run the command as the node's user" in str(info.value)
    assert "aside" not in str(info.value)
    with JobStore(tmp_path, reader=True) as store:  # status: read-only, nothing created
        assert store.counters() == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["queue.sqlite3"]


def _beat(store: JobStore, component: str, seconds_ago: float, pid: int | None = None) -> None:
    store.heartbeat(component)
    with store.transaction() as db:
        db.execute(
            "UPDATE heartbeats SET seen_at = seen_at - ?, pid = COALESCE(?, pid)"
            " WHERE component = ?",
            (seconds_ago, pid, component),
        )


@pytest.mark.parametrize("json_output", [False, True])
def test_status_exit_codes_follow_the_lsb_status_convention(
    tmp_path: Path, json_output: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Monitoring (Nagios/Icinga, systemd ExecCondition, scripts) reads the exit status:
    it was 0 whatever the report said."""
    from tests.node.helpers import ended_pid

    config = write_config(tmp_path)
    argv = ["status", "-c", str(config), *(["--json"] if json_output else [])]
    store = JobStore(tmp_path / "var" / "state")
    for name in ("node", "watcher", "deliver:pacs:0"):
        _beat(store, name, 0.0)
    assert cli.main(argv) == 0  # running and healthy

    _beat(store, "deliver:pacs:0", 60.0)  # a stage stuck or restarting
    assert cli.main(argv) == 1
    assert "deliver:pacs:0 NOT RUNNING" in capsys.readouterr().out
    _beat(store, "deliver:pacs:0", 0.0)

    job = store.enqueue("deliver", {"path": "/x.dcm"}, destination="pacs", dedup_key="1")
    store.claim("w")
    store.retry(job, 0.0, "connection refused")  # the PACS is down
    assert cli.main(argv) == 1
    assert "1 job(s) waiting for a retry" in capsys.readouterr().out
    store.ack([job])
    assert cli.main(argv) == 0

    gone = ended_pid()
    for name in ("node", "watcher", "deliver:pacs:0"):
        _beat(store, name, 0.0, pid=gone)  # the node was killed a moment ago
    assert cli.main(argv) == 3
    assert "not running" in capsys.readouterr().out
    store.close()


def test_a_long_job_keeps_its_component_alive_in_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export of a 250-image study PDF outlasts the 10 s of a heartbeat: the export
    runner beat only between jobs, so `status` called it NOT RUNNING (and, with exit
    codes, the node degraded) while it was busy and healthy."""
    import threading

    from node import status
    from node.config import QueueSection, load_config
    from node.jobs import JobRunner
    from node.queue import keepalive
    from tests.send.peers import until

    monkeypatch.setattr(keepalive, "HEARTBEAT_SECONDS", 0.02)
    monkeypatch.setattr(status, "ALIVE_SECONDS", 0.3)
    cfg = load_config(write_config(tmp_path))
    store = JobStore(cfg.node.state_dir)
    store.enqueue("study_complete", {"study_uid": "1.2", "archive_dir": "/a/1.2"})
    reports: list[dict] = []

    def long_pdf(job: object) -> None:
        started = store.heartbeats()["export-0"][1]
        # busy for longer than a component may go without a heartbeat
        until(lambda: store.heartbeats()["export-0"][1] > started + 3 * status.ALIVE_SECONDS)
        reports.append(status.collect_status(cfg))

    runner = JobRunner(store, {"study_complete": long_pdf}, QueueSection(), idle_seconds=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop, "export-0"))
    thread.start()
    until(lambda: bool(reports), timeout=30)
    stop.set()
    thread.join(10)
    assert reports[0]["components"]["export-0"]["alive"] is True
    assert status.assess(reports[0])[0] == status.EXIT_RUNNING
    store.close()


def test_receive_alone_shows_its_own_components_in_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dicom-node receive` wrote no `scp` heartbeat and kept those of an earlier `run`
    (watcher, send workers): `status` said degraded, "watcher NOT RUNNING", while the SCP
    it runs was not listed at all."""
    import signal

    from tests.node.helpers import ended_pid
    from tests.receive.helpers import start_receive
    from tests.send.peers import until

    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nstate_dir = "state"\n[receive]\narchive = "archive"\nmin_free_bytes = 0\n'
    )
    store = JobStore(tmp_path / "state")
    gone = ended_pid()
    for name in ("node", "watcher", "deliver:pacs:0"):
        _beat(store, name, 30.0, pid=gone)  # an earlier `dicom-node run`, stopped
    store.close()

    proc, port = start_receive(config)
    try:
        argv = ["status", "-c", str(config), "--json"]

        def reported() -> dict:
            cli.main(argv)
            return json.loads(capsys.readouterr().out)

        until(lambda: {"scp", "commitment"} <= set(reported()["components"]), timeout=30)
        assert cli.main(argv) == 0  # running and healthy
        report = json.loads(capsys.readouterr().out)
        assert set(report["components"]) == {"scp", "commitment"}
        assert report["components"]["scp"]["detail"] == f"port {port}"
        assert all(comp["alive"] for comp in report["components"].values())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        proc.stdout.close()
