"""``dicom-node send``, ``echo`` and ``queue`` end to end through ``node.cli.main``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from node.cli import main
from tests.peers import LOOPBACK, Storescp, free_port
from tests.send.data import jpeg_object, native_sc
from tests.send.peers import scripted_scp


def _cfg(tmp_path: Path, port: int, aet: str, extra: str = "") -> str:
    """A config with one destination "pacs" (``extra``: more keys for it); its path."""
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[node]
state_dir = "state"
[[destinations]]
name = "pacs"
host = "{LOOPBACK}"
port = {port}
called_ae = "{aet}"
{extra}
"""
    )
    return str(path)


@pytest.mark.dcmtk
def test_send_now_host_port_all_delivered(
    tmp_path: Path, storescp: Storescp, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "in" / "sub"
    d.mkdir(parents=True)
    native_sc(d / "a.dcm")
    jpeg_object(d / "b.dcm")
    target = f"{LOOPBACK}:{storescp.port}"
    assert main(["send", "--aec", storescp.aet, target, str(tmp_path / "in")]) == 0
    out = capsys.readouterr().out
    assert out.count("delivered  ") == 2
    assert "2 of 2 delivered" in out
    assert len(storescp.files()) == 2


@pytest.mark.dcmtk
def test_send_reports_a_non_dicom_file_and_fails(
    tmp_path: Path, storescp: Storescp, capsys: pytest.CaptureFixture[str]
) -> None:
    native_sc(tmp_path / "a.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    cfg = _cfg(tmp_path, storescp.port, storescp.aet)
    assert (
        main(
            [
                "send",
                "-c",
                cfg,
                "--dest",
                "pacs",
                str(tmp_path / "a.dcm"),
                str(tmp_path / "notes.txt"),
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "skipped    " in out and "not a DICOM file" in out
    assert "1 of 2 delivered" in out


def test_send_dead_file_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    native_sc(tmp_path / "a.dcm")
    with scripted_scp([0xC001]) as scp:
        rc = main(["send", "--dest", f"{LOOPBACK}:{scp.port}", str(tmp_path / "a.dcm")])
    assert rc == 1
    out = capsys.readouterr().out
    assert "dead: peer status 0xC001 (Cannot understand)" in out


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)
def test_echo_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with scripted_scp() as scp:
        assert main(["echo", f"{LOOPBACK}:{scp.port}"]) == 0
    assert "success" in capsys.readouterr().out
    assert main(["echo", f"{LOOPBACK}:{free_port()}"]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_queue_then_drain_then_manage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok, bad = native_sc(tmp_path / "ok.dcm"), native_sc(tmp_path / "bad.dcm")
    with scripted_scp([0x0000, 0xA900]) as scp:
        cfg = _cfg(tmp_path, scp.port, scp.aet)
        assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(ok), str(bad)]) == 0
        assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(ok)]) == 0  # idempotent
        capsys.readouterr()
        assert main(["queue", "list", "-c", cfg, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == [
            {"kind": "deliver", "destination": "pacs", "state": "queued", "count": 2}
        ]
        assert main(["queue", "drain", "-c", cfg, "--dest", "pacs"]) == 1  # one went dead
    capsys.readouterr()
    assert main(["queue", "list", "-c", cfg, "--state", "dead", "--json"]) == 0
    [dead] = json.loads(capsys.readouterr().out)
    assert dead["payload"]["path"] == str(bad) and "0xA900" in dead["last_error"]
    assert main(["queue", "show", str(dead["id"]), "-c", cfg]) == 0
    assert "0xA900" in capsys.readouterr().out
    assert main(["queue", "retry", "-c", cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"rearmed": 1}
    assert main(["queue", "purge", "-c", cfg, "--state", "done", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"purged": 1}
    assert main(["queue", "list", "-c", cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"kind": "deliver", "destination": "pacs", "state": "queued", "count": 1}
    ]


def test_send_queue_again_rearms_done_and_dead_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`send --queue` of a file already delivered (or given up) sends it again, and says so.

    Pending jobs stay as they are (idempotent); nothing is reported as queued that is not.
    """
    from node.queue.store import JobState, JobStore

    cfg = _cfg(tmp_path, free_port(), "PACS")
    a, b = native_sc(tmp_path / "a.dcm"), native_sc(tmp_path / "b.dcm")
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(a), str(b)]) == 0
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(a)]) == 0
    out = capsys.readouterr().out
    assert "already queued" in out and "queued 0 file(s)" in out
    with JobStore(tmp_path / "state") as store:
        ja, jb = store.select(limit=10)
        store.claim("t", kinds=["deliver"], destination="pacs", limit=2, lease_seconds=60)
        store.ack([ja.id])
        store.dead(jb.id, "0xA900")
    moved = tmp_path / "fixed" / "b.dcm"
    moved.parent.mkdir()
    b.rename(moved)
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(a), str(moved)]) == 0
    out = capsys.readouterr().out
    assert "was done" in out and "was dead" in out and "queued 2 file(s)" in out
    with JobStore(tmp_path / "state") as store:
        jobs = {j.id: j for j in store.select(limit=10)}
    assert [j.state for j in jobs.values()] == [JobState.QUEUED, JobState.QUEUED]
    assert jobs[jb.id].payload["path"] == str(moved) and jobs[jb.id].attempts == 0


def test_queue_needs_a_configured_destination(tmp_path: Path) -> None:
    native_sc(tmp_path / "a.dcm")
    assert main(["send", "--dest", "127.0.0.1:104", "--queue", str(tmp_path / "a.dcm")]) == 2


def test_pynetdicom_warnings_reach_the_log() -> None:
    import io
    import logging

    from node.logs import setup_logging

    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    try:
        logging.getLogger("pynetdicom.association").warning(
            "Received unexpected C-STORE service message"
        )
        logging.getLogger("pynetdicom.dul").info("chatty")
    finally:
        setup_logging("WARNING", "text")
    out = stream.getvalue()
    assert "Received unexpected C-STORE service message" in out
    assert "chatty" not in out


def test_send_queue_refuses_a_truncated_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cut-off file would make the peer abort (a retry, for days): refused at the door."""
    cfg = _cfg(tmp_path, free_port(), "PACS")
    whole = native_sc(tmp_path / "whole.dcm")
    cut = tmp_path / "cut.dcm"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(whole), str(cut)]) == 1
    out = capsys.readouterr().out
    assert "skipped" in out and "cut.dcm" in out and "queued 1 file(s)" in out


_PROBE = """
import sys
from node.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"pydicom", "pynetdicom", "numpy"})
print("HEAVY=" + ",".join(heavy))
# Start-up the whole command pays for nothing: json (text logging), the idna codec (an
# IP address or ASCII host name), an editable install's import hook (a .pth path instead).
slow = {"json", "encodings.idna"}
print("SLOW=" + ",".join(sorted(m for m in sys.modules if m in slow or "__editable__" in m)))
sys.exit(code)
"""


@pytest.mark.dcmtk
def test_send_as_stored_imports_no_pydicom(
    tmp_path: Path, storescp_any: Storescp, storescp: Storescp
) -> None:
    """Files whose syntax the peer accepts go out without pydicom, pynetdicom or numpy
    (start-up time); a file that must be decompressed still is, importing them then."""
    import subprocess
    import sys

    (tmp_path / "in").mkdir()
    native_sc(tmp_path / "in" / "a.dcm")
    jpeg_object(tmp_path / "in" / "b.dcm")

    def send(scp: Storescp) -> subprocess.CompletedProcess[str]:
        target = f"{LOOPBACK}:{scp.port}"
        cmd = [sys.executable, "-c", _PROBE, "send", "--aec", scp.aet, target]
        return subprocess.run(
            [*cmd, str(tmp_path / "in")], capture_output=True, text=True, timeout=120
        )

    as_stored = send(storescp_any)  # +xa: the JPEG goes as it is
    assert as_stored.returncode == 0, as_stored.stdout + as_stored.stderr
    assert "2 of 2 delivered" in as_stored.stdout and "HEAVY=\n" in as_stored.stdout
    assert "SLOW=\n" in as_stored.stdout
    assert len(storescp_any.files()) == 2
    decoded = send(storescp)  # uncompressed only: the JPEG is decoded with pydicom
    assert decoded.returncode == 0, decoded.stdout + decoded.stderr
    assert "2 of 2 delivered" in decoded.stdout and "HEAVY=numpy,pydicom\n" in decoded.stdout
    assert len(storescp.files()) == 2


@pytest.mark.dcmtk
@pytest.mark.parametrize("engine", ["wire", "pynetdicom"])
def test_destination_engine_from_the_config(
    tmp_path: Path, storescp: Storescp, capsys: pytest.CaptureFixture[str], engine: str
) -> None:
    from node.config import load_config
    from node.send.scu import StoreSCU

    cfg = Path(_cfg(tmp_path, storescp.port, storescp.aet, f'engine = "{engine}"'))
    dest = load_config(cfg).destination("pacs")
    assert StoreSCU(dest, calling_ae="ME").engine == engine
    native_sc(tmp_path / "a.dcm")
    assert main(["send", "-c", str(cfg), str(tmp_path / "a.dcm")]) == 0
    assert "1 of 1 delivered" in capsys.readouterr().out
    _cfg(tmp_path, storescp.port, storescp.aet, 'engine = "dcmtk"')
    assert main(["send", "-c", str(cfg), str(tmp_path / "a.dcm")]) == 2
    assert "destinations[0].engine: 'dcmtk' is not one of" in capsys.readouterr().err


def test_host_port_with_a_port_out_of_range_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`send 127.0.0.1:99999 f` said "no peer given" (the target was read as a file)."""
    f = native_sc(tmp_path / "a.dcm")
    for argv in (
        ["send", "127.0.0.1:99999", str(f)],
        ["send", "--dest", "127.0.0.1:0", str(f)],
        ["echo", "127.0.0.1:70000"],
    ):
        caplog.clear()
        assert main(argv) == 2
        assert "is not a TCP port (1-65535)" in caplog.text, argv


def test_host_port_accepts_bracketed_ipv6() -> None:
    """`send [::1]:104 f` tried to resolve the name "[::1]" (retry, for ever with --queue)."""
    from node.send.commands import _host_port

    assert _host_port("[::1]:104") == ("::1", 104)
    assert _host_port("::1:104") == ("::1", 104)
    assert _host_port("pacs.example.org:11112") == ("pacs.example.org", 11112)
    assert _host_port("[]:104") is None


def _medium(root: Path) -> Path:
    """A CD-like folder: two images under IMG/ and the DICOMDIR DCMTK's dcmmkdir makes."""
    import subprocess

    from tests.peers import tool

    (root / "IMG").mkdir(parents=True)
    native_sc(root / "IMG" / "IM1")
    native_sc(root / "IMG" / "IM2")
    subprocess.run(
        [tool("dcmmkdir"), "--recurse", "+I", "IMG"], cwd=root, check=True, capture_output=True
    )
    assert (root / "DICOMDIR").is_file()
    return root


@pytest.mark.dcmtk
def test_send_a_medium_ignores_its_dicomdir(
    tmp_path: Path, storescp_any: Storescp, capsys: pytest.CaptureFixture[str]
) -> None:
    """The DICOMDIR was C-STOREd as an object (refused: dead, exit 1; a PACS accepting every
    SOP class would have archived it); it is ignored and the images are sent."""
    cd = _medium(tmp_path / "cd")
    target = f"{LOOPBACK}:{storescp_any.port}"
    assert main(["send", "--aec", storescp_any.aet, target, str(cd)]) == 0
    out = capsys.readouterr().out
    assert "ignored    " in out and "DICOMDIR" in out
    assert "2 of 2 delivered" in out and "1 DICOMDIR ignored" in out
    assert len(storescp_any.files()) == 2


def _patient_cd(root: Path) -> Path:
    """A patient CD as modalities burn them: the images and DICOMDIR, plus a viewer."""
    _medium(root)
    (root / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER\\viewer.exe\n")
    (root / "VIEWER").mkdir()
    (root / "VIEWER" / "viewer.exe").write_bytes(b"MZ" + bytes(range(256)) * 8)
    return root


@pytest.mark.dcmtk
def test_send_a_patient_cd_with_its_viewer_exits_0(
    tmp_path: Path, storescp_any: Storescp, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every image delivered, but the CD's AUTORUN.INF and viewer counted as failures: exit
    1 and "2 of 4 delivered" for every patient CD (dcmsend --no-halt exits 0). Files met in
    a folder that are no DICOM at all are listed and passed over; an empty one (a copy that
    broke off) or a non-DICOM file named on the command line is still a failure."""
    cd = _patient_cd(tmp_path / "cd")
    target = f"{LOOPBACK}:{storescp_any.port}"
    assert main(["send", "--aec", storescp_any.aet, target, str(cd)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 delivered" in out and "2 non-DICOM file(s) ignored" in out
    assert f"ignored    {cd / 'AUTORUN.INF'}: not a DICOM file" in out
    assert len(storescp_any.files()) == 2

    (cd / "IMG" / "IM3").write_bytes(b"")  # cut off while copying
    assert main(["send", "--aec", storescp_any.aet, target, str(cd)]) == 1
    assert f"skipped    {cd / 'IMG' / 'IM3'}" in capsys.readouterr().out
    (cd / "IMG" / "IM3").unlink()
    named = ["send", "--aec", storescp_any.aet, target, str(cd), str(cd / "AUTORUN.INF")]
    assert main(named) == 1
    assert "skipped    " in capsys.readouterr().out

    cfg = _cfg(tmp_path, storescp_any.port, storescp_any.aet)
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(cd)]) == 0
    out = capsys.readouterr().out
    assert "queued 2 file(s)" in out and "2 non-DICOM file(s) ignored" in out


def test_send_queue_ignores_a_dicomdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cd = _medium(tmp_path / "cd")
    cfg = _cfg(tmp_path, free_port(), "PACS")
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(cd)]) == 0
    out = capsys.readouterr().out
    assert "queued 2 file(s)" in out and "1 DICOMDIR ignored" in out


def test_drain_tries_each_job_once_against_a_failing_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a backoff shorter than an attempt (retry_initial_seconds = 0 was accepted), a
    failed job was due again at once and the drain tried it again and again (for ever
    without max_attempts)."""
    from node.queue import retry

    monkeypatch.setattr(retry, "backoff_seconds", lambda *a, **k: 0.0)
    native_sc(tmp_path / "a.dcm")
    cfg = _cfg(tmp_path, free_port(), "PACS")  # nobody listens: every attempt fails
    with open(cfg, "a") as fh:
        fh.write("[queue]\nmax_attempts = 20\n")
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(tmp_path / "a.dcm")]) == 0
    assert main(["queue", "drain", "-c", cfg, "--dest", "pacs", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["attempted"] == 1 and summary["waiting_retry"] == 1
    assert main(["queue", "list", "-c", cfg, "--state", "retry", "--json"]) == 0
    [job] = json.loads(capsys.readouterr().out)
    assert job["attempts"] == 1


def _one_uid_three_files(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """``a``, ``copy`` (the same bytes) and ``other`` (another object), all one SOP
    Instance UID: a CD copied twice, and a converter copying a template's UID."""
    import shutil

    uid = "1.2.826.0.1.3680043.10.1234.77"
    d = tmp_path / "in"
    d.mkdir()
    a = native_sc(d / "a.dcm", uid=uid)
    copy = d / "b-copy.dcm"
    shutil.copy(a, copy)
    other = native_sc(d / "c-other.dcm", uid=uid, size=64)
    return a, copy, other, uid


def _conflict(uid: str, first: Path, how: str) -> str:
    return f"(0008,0018) SOPInstanceUID {uid} is already {how} for another file, {first} ("


def test_send_queue_names_the_file_queued_under_the_same_uid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "already queued" for a different file too, without naming the other file:
    the second object was silently never sent."""
    a, copy, other, uid = _one_uid_three_files(tmp_path)
    cfg = _cfg(tmp_path, free_port(), "PACS")
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(a)]) == 0
    capsys.readouterr()
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(copy), str(other)]) == 1
    out = capsys.readouterr().out
    assert f"already queued  {copy}: the same content as {a}, queued under (0008,0018)" in out
    line = next(x for x in out.splitlines() if x.startswith("skipped"))
    assert line.startswith(
        f"skipped  {other}: " + _conflict(uid, a, "queued for pacs as job 1 (queued)")
    )
    assert " bytes there, " in line
    assert "new SOP Instance UID at the source" in line and "again with --replace" in line
    assert "queued 0 file(s) for pacs" in out and "1 already queued, 1 skipped" in out


@pytest.mark.dcmtk
def test_send_queue_replace_swaps_the_file_of_a_waiting_job(
    tmp_path: Path, storescp: Storescp, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file corrected while its first version waited for a PACS that was down could only
    be queued once that version was delivered (or given up): hours later. With --replace
    the waiting job sends the corrected file, attempts reset, and only that one arrives."""
    from pydicom import dcmread

    from node.queue.store import JobStore
    from node.send.worker import KIND

    a, copy, other, uid = _one_uid_three_files(tmp_path)
    cfg = _cfg(tmp_path, storescp.port, storescp.aet)
    assert main(["send", "-c", cfg, "--dest", "pacs", "--queue", str(a)]) == 0
    with JobStore(tmp_path / "state") as store:
        (job,) = store.select(kind=KIND)
        store.retry(job.id, time.time() + 3600, "PACS down")  # waiting for an hour
    capsys.readouterr()
    argv = ["send", "-c", cfg, "--dest", "pacs", "--queue", "--replace"]
    assert main([*argv, str(copy)]) == 0  # the same content: nothing to replace
    assert main([*argv, str(other)]) == 0
    out = capsys.readouterr().out
    assert f"already queued  {copy}: the same content as {a}" in out
    assert f"replaced  {other}: job 1 (retry) sends this file, not {a}" in out
    assert "1 replaced the file of a queued job" in out
    with JobStore(tmp_path / "state") as store:
        (job,) = store.select(kind=KIND)
    assert (job.state, job.attempts, job.payload["path"]) == ("queued", 0, str(other))
    assert main(["queue", "drain", "-c", cfg, "--dest", "pacs"]) == 0
    (received,) = storescp.by_uid().values()
    assert dcmread(received).PixelData == dcmread(other).PixelData != dcmread(a).PixelData


def test_send_replace_needs_queue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, _, _, _ = _one_uid_three_files(tmp_path)
    cfg = _cfg(tmp_path, free_port(), "PACS")
    assert main(["send", "-c", cfg, "--dest", "pacs", "--replace", str(a)]) == 2
    assert "--replace works with --queue" in caplog.text


@pytest.mark.dcmtk
def test_send_now_sends_one_uid_once_and_refuses_another_file_under_it(
    tmp_path: Path, storescp: Storescp, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --queue both went out, and the PACS kept one of two different objects
    (storescp writes one file per UID): now as with --queue."""
    a, copy, other, uid = _one_uid_three_files(tmp_path)
    cfg = _cfg(tmp_path, storescp.port, storescp.aet)
    assert main(["send", "-c", cfg, "--dest", "pacs", str(tmp_path / "in")]) == 1
    out = capsys.readouterr().out
    assert f"delivered  {a}" in out
    assert f"ignored    {copy}: the same content as {a}, sent under (0008,0018)" in out
    assert f"skipped    {other}: " + _conflict(uid, a, "sent in this run") in out
    assert "1 of 2 delivered" in out and "1 identical copies ignored" in out
    assert list(storescp.by_uid()) == [uid]
