"""Foundation: config validation, atomic writes, safe paths, UIDs, the job store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node import cli
from node.config import config_from_dict, load_config
from node.errors import ConfigError, UnsafePath
from node.fsutil import atomic_write, clean_temp_files, is_valid_uid, safe_join
from node.queue import JobState, JobStore
from node.uids import new_uid, uid_from_seed, validate_root

REPO = Path(__file__).resolve().parent.parent


def test_default_config_loads_and_points_at_own_scp() -> None:
    cfg = load_config(REPO / "config" / "node.toml")
    assert cfg.node.base_dir == REPO
    assert cfg.receive.archive == REPO / "var" / "archive"
    (dest,) = cfg.destinations
    assert (dest.host, dest.port, dest.called_ae) == ("127.0.0.1", 11112, cfg.receive.ae_title)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"receive": {"port": "x"}}, "receive.port: expected an integer"),
        ({"receive": {"prot": 1}}, "receive.prot: unknown key (did you mean 'port'?"),
        ({"bogus": {}}, "bogus: unknown section (known: destinations, export, ingest,"),
        ({"recieve": {}}, "recieve: unknown section (did you mean 'receive'? known: "),
        ({"receive": {"ae_titel": "X"}}, "receive.ae_titel: unknown key (did you mean"),
        ({"node": {"log_level": "debug"}}, "'debug' is not one of 'DEBUG', 'INFO', 'WARNING', "),
        ({"node": {"log_level": "debug"}}, "(did you mean 'DEBUG'?)"),
        ({"receive": {"port": "104"}}, "got '104' (write the number without quotes: 104)"),
        (
            {"node": {"ae_title": 123}},
            'node.ae_title: expected a string, got 123 (quote it: "123")',
        ),
        ({"ingest": {"sop_class": "ct"}}, "ingest.sop_class: 'ct' is not one of"),
        ({"destinations": [{"name": "a", "host": "h"}]}, "destinations[0].port: required"),
        ({"node": {"uid_root": "1.02.3"}}, "uid_root '1.02.3' is not a valid UID root"),
        ({"queue": {"retry_initial_seconds": 0}}, "queue.retry_initial_seconds: 0.0 is out of"),
        ({"receive": {"allowed_networks": ["300.1.1.1/8"]}}, "receive.allowed_networks[0]"),
        ({"ingest": {"destinations": ["nope"]}}, "unknown destination 'nope'"),
        ({"destinations": {"name": "a"}}, "write [[destinations]], with double brackets"),
        ({"receive": {"forward": {"destination": "a"}}}, "write [[receive.forward]]"),
        ({"node": {"base_dir": "~/dicom"}}, "node.base_dir: '~/dicom': '~' and environment"),
        ({"ingest": {"inbox": "${HOME}/in"}}, "ingest.inbox: '${HOME}/in': '~' and environment"),
    ],
)
def test_bad_config_names_the_key(table: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(table, tmp_path)
    assert message in str(info.value)


def test_unquoted_toml_date_says_how_to_write_it(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[ingest.defaults]\nStudyDate = 2026-01-01\nStudyTime = 09:30:00\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"{config}:2: ingest.defaults.StudyDate: expected a string or number, got the TOML "
        "date/time 2026-01-01 (TOML reads an unquoted date as a date: quote it, as DICOM "
        'writes it, e.g. "20260101")'
    )
    config.write_text("[ingest.defaults]\nStudyTime = 09:30:00\n")
    with pytest.raises(ConfigError, match='quote it, as DICOM writes it, e.g. "093000"'):
        load_config(config)


CONFIG_WITH_MISTAKES = """\
# dicom-node
[node]
ae_title = "DICOMNODE"

[[destinations]]
name = "pacs"
host = "127.0.0.1"
port = 104

[[destinations]]   # the second one
name = "backup"
host = "127.0.0.1"
port = 105
  [destinations.tls]
  enabled = true
  ca_file = "ca.pem"
  verify_peer = false

[receive]
allowed_networks = [
  "127.0.0.0/8",
  "127.1.0.0/16",
]
description = \"\"\"
port = 1
\"\"\"
"""


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("verify_peer = false", 'verify_peer = "yes"', 17, "destinations[1].tls.verify_peer"),
        ("", "", 24, "receive.description: unknown key (known: "),
        ("port = 105", 'port = "105"', 13, "destinations[1].port: expected an integer"),
        ("port = 104", "prot = 104", 8, "destinations[0].prot: unknown key (did you mean 'port'?"),
        ('host = "127.0.0.1"\nport = 105', "", 10, "destinations[1].host: required key"),
        ('"127.1.0.0/16"', '"127.1.0.0/33"', 20, "receive.allowed_networks[1]: "),
        ("[receive]", "[recieve]", 19, "recieve: unknown section (did you mean 'receive'?"),
        ('ae_title = "DICOMNODE"', 'ae_titel = "X"', 3, "node.ae_titel: unknown key (did you mean"),
    ],
)
def test_config_errors_name_the_file_and_line(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    """An operator reading `run`'s one error line (under systemd, say) learns which file
    and which line to open, and what was probably meant."""
    text = CONFIG_WITH_MISTAKES.replace(old, new)
    if "description" not in message:
        text = text.replace('description = """\nport = 1\n"""\n', "")
    config = tmp_path / "node.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value).startswith(f"{config}:{line}: {message}"), str(info.value)


def test_check_config_room_errors_name_the_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nbase_dir = "{tmp_path}"\n\n[ingest.defaults]\nPatientNme = "Doe^Jane"\n'
    )
    assert cli.main(["check-config", "-c", str(config)]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith(f"{config}:4: [ingest.defaults]: 'PatientNme' is neither"), line
    assert "did you mean PatientName?" in line


def test_config_file_that_is_not_utf8_text_is_named(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_bytes(b'[node]\nae_title = "\xc4RZT"\n')  # Latin-1, as some editors save
    with pytest.raises(ConfigError, match="node.toml: not UTF-8 text"):
        load_config(config)


def test_check_config_command_prints_resolved_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "-c", str(REPO / "config" / "node.toml")]) == 0
    assert str(REPO / "var" / "inbox") in capsys.readouterr().out


def test_atomic_write_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.bin"
    atomic_write(target, b"x")
    assert target.read_bytes() == b"x"
    with pytest.raises(FileExistsError):
        atomic_write(target, b"y", overwrite=False)
    assert target.read_bytes() == b"x"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.bin"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0600
    (target.parent / ".tmp-leftover").write_bytes(b"")
    assert clean_temp_files(tmp_path) == 1


def test_write_all_resumes_short_writes_inside_and_across_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces = [
        b"head",
        b"",
        b"x" * 5000,
        b"tail!",
        *[bytes([i % 256]) * (i % 7 + 1) for i in range(1100)],
    ]
    expected = b"".join(pieces)
    real_writev = os.writev
    calls = []

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        # at most 7 bytes per call: every piece boundary is crossed by a short write
        return real_writev(fd, [bytes(b"".join(bytes(b) for b in buffers)[:7])])

    monkeypatch.setattr(os, "writev", short_writev)
    target = tmp_path / "parts.bin"
    atomic_write(target, pieces, fsync=False)
    assert target.read_bytes() == expected
    assert max(calls) <= 1024  # never more than IOV_MAX buffers per call
    monkeypatch.undo()
    atomic_write(target, pieces, fsync=False)  # the real writev, all at once
    assert target.read_bytes() == expected
    atomic_write(target, b"one buffer", fsync=False)
    assert target.read_bytes() == b"one buffer"


@pytest.mark.parametrize("bad", ["..", "../x", "1.2/../../etc", ".hidden", "", "a\x00b"])
def test_safe_join_refuses_escape(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, "1.2", bad)


@pytest.mark.parametrize(
    ("uid", "ok"),
    [
        ("1.2.3", True),
        ("1", True),
        ("1.2.", False),
        (".1.2", False),
        ("1..2", False),
        ("1.2.a", False),
        ("../../x", False),
        ("1" * 65, False),
        ("1.2.3\n", False),
    ],
)
def test_uid_validation(uid: str, ok: bool) -> None:
    assert is_valid_uid(uid) is ok


def test_uids_deterministic_and_valid() -> None:
    a = uid_from_seed("2.25", b"pixels", "study")
    assert a == uid_from_seed("2.25", b"pixels", "study")
    assert a != uid_from_seed("2.25", b"pixels", "other")
    long_root = "1.2.826.0.1.3680043.10.999999"
    b = uid_from_seed(validate_root(long_root), "x")
    for uid in (a, b, new_uid(), new_uid(long_root)):
        assert is_valid_uid(uid)
        assert all(p == "0" or not p.startswith("0") for p in uid.split("."))


def test_job_store_lifecycle(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    first = store.enqueue("deliver", {"path": "a.dcm"}, destination="pacs", dedup_key="1.2.3")
    again = store.enqueue("deliver", {"path": "a.dcm"}, destination="pacs", dedup_key="1.2.3")
    other = store.enqueue("deliver", {"path": "a.dcm"}, destination="pacs2", dedup_key="1.2.3")
    assert first == again != other
    (job,) = store.claim("w1", destination="pacs", lease_seconds=60)
    assert job.state == JobState.CLAIMED and job.attempts == 1
    assert store.claim("w2", destination="pacs") == []
    store.retry(job.id, time.time() - 1, "0xA700 out of resources")
    (job,) = store.claim("w1", destination="pacs")
    assert job.attempts == 2
    store.dead(job.id, "0xC000")
    assert store.get(job.id).state == JobState.DEAD  # type: ignore[union-attr]
    assert store.rearm(state=JobState.DEAD) == 1
    (job,) = store.claim("w1", destination="pacs")
    store.ack([job.id], note="0xB000 warning")
    assert store.get(job.id).last_error == "0xB000 warning"  # type: ignore[union-attr]
    assert store.purge(JobState.DONE) == 1


def test_job_store_reclaims_expired_lease_and_requeues_on_restart(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.enqueue("deliver", {}, destination="d", dedup_key="1")
    store.enqueue("deliver", {}, destination="d", dedup_key="2")
    a, b = store.claim("crashed", limit=2, lease_seconds=-1)
    (again,) = store.claim("w", limit=1)
    assert again.id == a.id and again.attempts == 2
    store.close()
    restarted = JobStore(tmp_path)  # a restart: claimed jobs of dead workers come back
    assert restarted.requeue_claimed() == 2
    assert {j.state for j in restarted.select()} == {JobState.QUEUED}


def test_job_store_survives_other_process_view(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.enqueue("deliver", {}, destination="d", dedup_key="x")
    store.bump("ingested", 3)
    store.heartbeat("watcher")
    view = JobStore(tmp_path)
    assert view.pending() == 1
    assert view.counters() == {"ingested": 3}
    assert view.heartbeats()["watcher"][0] == os.getpid()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.toml")))
def test_shipped_configs_are_valid(name: str) -> None:
    cfg = load_config(REPO / "config" / name)
    for dest in cfg.destinations:
        assert dest.host == "127.0.0.1"  # defaults and examples stay on loopback


def test_readme_documents_every_config_key() -> None:
    import dataclasses

    from node import config as c

    readme = (REPO / "README.md").read_text()
    sections = [
        c.NodeSection,
        c.IngestSection,
        c.QueueSection,
        c.Destination,
        c.TLSSettings,
        c.ReceiveSection,
        c.ForwardRule,
        c.ExportSection,
        c.MetricsSection,
    ]
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in sections
        for f in dataclasses.fields(cls)
        if f"`{f.name}`" not in readme
    ]
    assert missing == [], "document these config keys in README.md: " + ", ".join(missing)


def test_json_log_lines_carry_structured_fields() -> None:
    import io
    import json
    import logging

    from node.logs import fields, setup_logging

    stream = io.StringIO()
    setup_logging("INFO", "json", stream)
    logging.getLogger("node.test").info("stored", extra=fields(sop="1.2.3", path="/a"))
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert (record["message"], record["sop"], record["level"]) == ("stored", "1.2.3", "info")
    setup_logging("INFO", "text", stream)
    logging.getLogger("node.test").info("again", extra=fields(sop="1.2.3"))
    assert stream.getvalue().splitlines()[-1].endswith("node.test: again sop=1.2.3")
    reason = 'cannot connect to 127.0.0.1:104 (refused); path "x=1"'
    logging.getLogger("node.test").warning("retry", extra=fields(reason=reason, to="/a b/c"))
    line = stream.getvalue().splitlines()[-1]  # values with spaces are quoted, as logfmt
    assert line.endswith(f'retry reason={json.dumps(reason)} to="/a b/c"')
    assert sum(h.get_name() == "dicom-node" for h in logging.getLogger().handlers) == 1


_DEST = '[[destinations]]\nname = "a"\nhost = "127.0.0.1"\nport = 104\n'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[ingest.defaults]\nPatientNme = "x"\n', "PatientNme"),
        ('[ingest.defaults]\nStudyDate = "2020-01-01"\n', "StudyDate"),
        ("[queue]\nretry_jitter = 5\n", "queue.retry_jitter: 5.0 is out of range"),
        ("[queue]\nbatch_size = -1\n", "queue.batch_size"),
        ("[export]\npng_compress_level = 12\n", "export.png_compress_level"),
        # values the schema alone can judge
        ("[queue]\nlease_seconds = nan\n", "queue.lease_seconds: expected a finite number"),
        ("[queue]\nmax_age_seconds = inf\n", "queue.max_age_seconds: expected a finite number"),
        ('[node]\nae_title = "\u00c4RZT"\n', "node.ae_title: '\u00c4RZT' is not a valid AE"),
        ('[receive]\nallowed_calling_aes = ["A\\\\B"]\n', "receive.allowed_calling_aes[0]"),
        ("[receive]\nmax_pdu = 10\n", "receive.max_pdu: 10 is out of range"),
        ("[receive]\nmin_free_bytes = -1\n", "receive.min_free_bytes: -1"),
        ("[receive]\ndimse_timeout = 0\n", "receive.dimse_timeout: 0 must be more than 0"),
        ("[receive]\nmax_associations = 0\n", "receive.max_associations: 0 must be"),
        ("[receive]\nchunk_threshold_bytes = 0\n", "receive.chunk_threshold_bytes: 0"),
        ('[receive]\nhost = ""\n', "receive.host: '' is not a host"),
        (_DEST.replace('"127.0.0.1"', '""'), "destinations[0].host: '' is not a host"),
        (_DEST + "acse_timeout = -5\n", "destinations[0].acse_timeout: -5 must be"),
        (_DEST + 'transfer_syntaxes = ["jpeg"]\n', "destinations[0].transfer_syntaxes[0]"),
        (_DEST + _DEST, "destinations[1].name: 'a' is used twice"),
        # bad combinations
        ("[metrics]\nenabled = true\nport = 11112\n", "metrics.port: 11112 is also receive.port"),
        (
            _DEST.replace("104", "11112") + 'called_ae = "PACS"\n',
            "destinations[0].called_ae: 'PACS' but 127.0.0.1:11112 is this node's own SCP",
        ),
        ('[receive]\narchive = "var/inbox/archive"\n', "receive.archive = "),
        ('[ingest]\ndone = "var/inbox"\n', "ingest.done and ingest.inbox are the same folder"),
        ('[export]\ndir = "var/archive/png"\n', "export.dir = "),
        # the machine: folders, TLS files, access rules
        ('[ingest]\ninbox = "a-file"\n', "ingest.inbox: "),
        ('[node]\nstate_dir = "a-file/state"\n', "node.state_dir: "),
        ('[export]\nmanifest = "."\n', "export.manifest: "),
        ("[receive.tls]\nenabled = true\n", "receive.tls.enabled needs receive.tls.cert_file"),
        (
            '[receive]\nhost = "0.0.0.0"\nallowed_networks = []\n',
            "receive.host='0.0.0.0' is reachable from other machines",
        ),
        (
            _DEST + '[destinations.tls]\nenabled = true\nca_file = "missing.pem"\n',
            "destinations.a.tls.ca_file",
        ),
    ],
)
def test_check_config_refuses_what_run_refuses(
    tmp_path: Path, toml: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    from node.errors import NodeError
    from node.service import NodeService

    (tmp_path / "a-file").write_text("not a folder")
    config = tmp_path / "node.toml"
    config.write_text(toml)
    assert cli.main(["check-config", "-c", str(config)]) == 2
    assert message in caplog.text
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1  # one line
    # `run` refuses the same config, before it starts anything
    with pytest.raises(NodeError) as refused:
        service = NodeService(load_config(config))
        try:
            service.start()
        finally:
            service.stop(timeout=5)
    assert message in str(refused.value)


def test_job_replaced_while_claimed_by_a_process_that_died_runs_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.enqueue("export", {"v": 1}, dedup_key="s")
    (job,) = store.claim("dead-worker")
    store.enqueue("export", {"v": 2}, dedup_key="s", replace=True)  # re-run asked for
    assert store.requeue_claimed() == 1  # restart: the dead worker's claim comes back
    (again,) = store.claim("w")
    assert again.payload == {"v": 2}
    store.ack([again.id])
    assert store.get(again.id).state == JobState.DONE  # type: ignore[union-attr]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with block-buffered standard streams (as a service or pipe has them)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def _console(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (which ends in ``node.cli.console()``) in a fresh interpreter."""
    return _python("-c", code)


def test_console_exit_delivers_piped_output_log_lines_and_status(tmp_path: Path) -> None:
    """The quick exit of the console script loses no output, log line or exit status."""
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nae_title = "QUICKEXIT"\n')
    res = _python("-m", "node", "check-config", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["node"]["ae_title"] == "QUICKEXIT"  # all of it, parseable
    res = _python("-m", "node", "convert", str(tmp_path / "missing"), "-o", str(tmp_path))
    assert res.returncode == 1
    # the log line (through the handler, flushed at exit) and the summary (print) both came
    assert "ERROR" in res.stderr and "missing: cannot read the file" in res.stderr
    assert "converted 0, refused 1 of 1 file(s)" in res.stderr


def test_console_runs_atexit_handlers_and_waits_for_running_threads() -> None:
    res = _console(
        "import atexit, threading, time\n"
        "import node.cli as cli\n"
        "atexit.register(lambda: print('atexit handler ran', flush=True))\n"
        "cli.main = lambda argv=None: 3\n"
        "cli.console()\n"
    )
    assert (res.returncode, res.stdout) == (3, "atexit handler ran\n"), res.stderr
    res = _console(
        "import threading, time\n"
        "import node.cli as cli\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    print('thread finished', flush=True)\n"
        "def main(argv=None):\n"
        "    threading.Thread(target=late).start()\n"
        "    return 0\n"
        "cli.main = main\n"
        "cli.console()\n"
    )
    assert (res.returncode, res.stdout) == (0, "thread finished\n"), res.stderr


def test_version_imports_no_sub_command_and_help_still_lists_them() -> None:
    code = (
        "import sys\n"
        "from node import cli\n"
        "try:\n"
        "    cli.main(['--version'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0\n"
        "loaded = sorted(m for m in cli.COMMANDS.values() if m in sys.modules)\n"
        "print('loaded:', loaded, 'pydicom' in sys.modules)\n"
    )
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dicom-node ")
    assert "loaded: [] False" in done.stdout
    shown = _python("-m", "node", "--version", "--help")  # --version first: argparse's order
    assert shown.returncode == 0 and shown.stdout.startswith("dicom-node ")
    helped = _python("-m", "node", "--help", "--version")
    assert helped.returncode == 0 and all(c in helped.stdout for c in cli.COMMANDS)
