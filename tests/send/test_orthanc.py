"""Delivery into Orthanc (the PACS): a mixed set, and a sender killed mid-batch."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.cli import main
from node.queue.store import JobState, JobStore
from tests.peers import LOOPBACK, Orthanc
from tests.send.data import mixed_set, native_sc
from tests.send.peers import until

pytestmark = pytest.mark.orthanc


def _config(tmp_path: Path, orthanc: Orthanc, batch: int = 200) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        f"""
[node]
state_dir = "state"
ae_title = "DICOMNODE"
[queue]
batch_size = {batch}
retry_jitter = 0.0
[[destinations]]
name = "orthanc"
host = "{LOOPBACK}"
port = {orthanc.dicom_port}
called_ae = "{orthanc.aet}"
"""
    )
    return cfg


def test_mixed_set_arrives_bit_exact(tmp_path: Path, orthanc: Orthanc, capsys) -> None:
    files = mixed_set(tmp_path / "in")
    cfg = _config(tmp_path, orthanc)
    assert main(["send", "-c", str(cfg), "--dest", "orthanc", str(tmp_path / "in")]) == 0
    out = capsys.readouterr().out
    assert out.count("delivered  ") == len(files)
    assert f"{len(files)} of {len(files)} delivered" in out

    originals = {}
    for f in files:
        ds = dcmread(f)
        originals[ds.SOPInstanceUID] = ds
    stored = {}
    for oid in orthanc.instances():
        ds = dcmread(io.BytesIO(orthanc.file(oid)))
        stored[ds.SOPInstanceUID] = ds
    assert set(stored) == set(originals)
    for uid, original in originals.items():
        got = stored[uid]
        # Every file's syntax is accepted by Orthanc: sent as is, pixel data byte-identical
        # (JPEG stream unchanged; lossless and native pixels bit-exact).
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, uid
        assert got.PixelData == original.PixelData, uid
        assert got.SOPClassUID == original.SOPClassUID


def test_killed_sender_restarts_and_delivers_everything_once(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    n = 240
    src = tmp_path / "in"
    src.mkdir()
    for i in range(n):
        native_sc(src / f"{i:04d}.dcm", size=128, bits=16)
    cfg = _config(tmp_path, orthanc, batch=100)
    assert main(["send", "-c", str(cfg), "--dest", "orthanc", "--queue", str(src)]) == 0
    cmd = [sys.executable, "-m", "node", "queue", "drain", "-c", str(cfg), "--dest", "orthanc"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))

    def stored() -> int:
        return int(orthanc.get("/statistics")["CountInstances"])

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: stored() >= 30 or proc.poll() is not None)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sender finished before it could be killed"
    with JobStore(tmp_path / "state") as store:
        states = [j.state for j in store.select(limit=10_000)]
        assert JobState.CLAIMED in states  # killed mid-batch: a lease left behind
        assert states.count(JobState.DONE) < n

    restarted = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "took back" in restarted.stderr

    assert stored() == n
    uids = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in src.iterdir()}
    assert set(orthanc.sop_instance_uids()) == uids
    with JobStore(tmp_path / "state") as store:
        assert [j.state for j in store.select(limit=10_000)] == [JobState.DONE] * n
        delivered = store.counters()["delivered"]
    # Each job acknowledged once; objects the peer stored just before the kill but that
    # were not yet acked were sent again (same SOP Instance UID: Orthanc keeps one).
    assert delivered == n


def test_object_without_series_uid_is_dead_not_retried_for_a_week(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """Orthanc answers an object it cannot file (no (0020,000E) SeriesInstanceUID, an empty
    (0020,000D) StudyInstanceUID) with 0xA700 "out of resources": read as transient, the job
    was retried for queue.max_age_seconds. The data set says why: dead at once, naming the
    element; a sound file of the same batch is delivered."""
    src = tmp_path / "in"
    src.mkdir()
    good = native_sc(src / "good.dcm")
    no_series = native_sc(src / "no_series.dcm")
    ds = dcmread(no_series)
    del ds.SeriesInstanceUID
    ds.save_as(no_series, enforce_file_format=True)
    empty_study = native_sc(src / "empty_study.dcm")
    ds = dcmread(empty_study)
    ds.StudyInstanceUID = ""
    ds.save_as(empty_study, enforce_file_format=True)
    cfg = _config(tmp_path, orthanc)
    assert main(["send", "-c", str(cfg), "--dest", "orthanc", "--queue", str(src)]) == 0
    assert main(["queue", "drain", "-c", str(cfg), "--dest", "orthanc"]) == 1

    with JobStore(tmp_path / "state") as store:
        jobs = {Path(j.payload["path"]).name: j for j in store.select(limit=10)}
    assert jobs["good.dcm"].state == JobState.DONE
    for name, element in (
        ("no_series.dcm", "(0020,000E) SeriesInstanceUID"),
        ("empty_study.dcm", "(0020,000D) StudyInstanceUID"),
    ):
        job = jobs[name]
        assert job.state == JobState.DEAD, (name, job.last_error)
        assert "0xA700" in (job.last_error or "")
        assert f"has no {element}" in (job.last_error or "")
        assert job.attempts == 1
    assert orthanc.sop_instance_uids() == [dcmread(good).SOPInstanceUID]


def _send_refused(
    tmp_path: Path, orthanc: Orthanc, capsys: pytest.CaptureFixture[str], edit: Callable[..., None]
) -> str:
    """``send`` of one SC object changed by ``edit`` (its Dataset), which Orthanc refuses for
    good (exit 1): the command's output."""
    f = native_sc(tmp_path / "edited.dcm")
    ds = dcmread(f)
    edit(ds)
    ds.save_as(f, enforce_file_format=True)
    cfg = _config(tmp_path, orthanc)
    assert main(["send", "-c", str(cfg), "--dest", "orthanc", str(f)]) == 1
    return capsys.readouterr().out


def test_refusal_names_a_sop_instance_uid_missing_from_the_data_set(
    tmp_path: Path, orthanc: Orthanc, capsys
) -> None:
    """Orthanc refuses a data set without (0008,0018) SOPInstanceUID with a bare 0xC000; the
    line names the missing element (its file meta has the UID, so the send was planned)."""
    out = _send_refused(tmp_path, orthanc, capsys, lambda ds: delattr(ds, "SOPInstanceUID"))
    assert "dead: peer status 0xC000" in out
    assert "has no (0008,0018) SOPInstanceUID" in out


def test_a_pacs_aborting_every_store_is_named_in_words(
    tmp_path: Path, orthanc: Orthanc, caplog: pytest.LogCaptureFixture
) -> None:
    """Orthanc that does not know our calling AE (DicomAlwaysAllowStore false) accepts the
    association and aborts at the first C-STORE; the job said only "the peer aborted the
    association (source 0, reason 0)". An abort stays a retry (a PACS restarting aborts too),
    but the reason now says who aborted and what usually causes it, and the log line names
    our calling AE title."""
    import json

    orthanc.stop()
    config = json.loads(orthanc.config_path.read_text())
    config["DicomAlwaysAllowStore"] = False
    orthanc.config_path.write_text(json.dumps(config))
    orthanc.start()
    f = native_sc(tmp_path / "a.dcm")
    cfg = _config(tmp_path, orthanc)
    assert main(["send", "-c", str(cfg), "--dest", "orthanc", "--queue", str(f)]) == 0
    assert main(["queue", "drain", "-c", str(cfg), "--dest", "orthanc"]) == 1
    with JobStore(tmp_path / "state") as store:
        [job] = store.select(limit=10)
    assert job.state == JobState.RETRY
    assert "A-ABORT from the PACS application itself" in (job.last_error or "")
    assert "DicomModalities" in (job.last_error or "")
    assert "association of DICOMNODE with ORTHANC@" in caplog.text
    assert orthanc.instances() == []


def test_a_private_sop_class_refused_by_orthanc_says_how_to_allow_it(
    tmp_path: Path, orthanc: Orthanc, capsys
) -> None:
    """Orthanc refuses a SOP class it does not know (UnknownSopClassAccepted false): the
    line repeated the UID ("SOP class 1.2.3 (1.2.3)") and said nothing of the fix."""

    def private(ds: Dataset) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.113619.4.27"

    out = _send_refused(tmp_path, orthanc, capsys, private)
    assert "dead: SOP class 1.2.840.113619.4.27 not accepted by AE ORTHANC@" in out
    assert "UnknownSopClassAccepted" in out
