"""The ingest pipeline without a network: claim, convert or validate, enqueue, finish."""

from __future__ import annotations

import gc
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.fileset import FileSet

from node.config import Config, config_from_dict
from node.errors import ConfigError
from node.ingest.pipeline import CLAIM_FILE, IngestPipeline
from node.queue import JobState, JobStore
from tests.node.series import write_ct_series


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    table = {
        "node": {"base_dir": str(tmp_path)},
        "ingest": {
            "filename_pattern": r"(?P<PatientID>\d+)_(?P<AccessionNumber>\w+)_.*\.jpg",
            "defaults": {"ImageLaterality": "U"},
        },
        "destinations": [
            {"name": "a", "host": "127.0.0.1", "port": 104},
            {"name": "b", "host": "127.0.0.1", "port": 105},
        ],
    }
    return config_from_dict(table, tmp_path)


def drop(cfg: Config, name: str, data: bytes) -> Path:
    cfg.ingest.inbox.mkdir(parents=True, exist_ok=True)
    path = cfg.ingest.inbox / name
    path.write_bytes(data)
    return path


def deliver_jobs(store: JobStore) -> list:
    return store.select(kind="deliver")


def ack_all(store: JobStore, pipeline: IngestPipeline) -> None:
    for job in deliver_jobs(store):
        store.ack([job.id])
        pipeline.on_delivered(job.payload)


def test_single_image_with_sidecar_and_name_pattern(cfg: Config) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    image = drop(cfg, "12345_ACC9_wound.jpg", jpeg(1))
    (cfg.ingest.inbox / "12345_ACC9_wound.jpg.json").write_text(
        json.dumps({"PatientName": "Müller^Jörg"})
    )
    pipeline.take(image)
    assert not any(cfg.ingest.inbox.iterdir())  # the sidecar travelled with its image
    jobs = deliver_jobs(store)
    assert sorted(j.destination for j in jobs) == ["a", "b"]
    ds = pydicom.dcmread(jobs[0].payload["path"])
    assert (ds.PatientID, ds.AccessionNumber, str(ds.PatientName)) == (
        "12345",
        "ACC9",
        "Müller^Jörg",
    )
    # one destination acknowledged: the claim waits for the other
    store.ack([jobs[0].id])
    pipeline.on_delivered(jobs[0].payload)
    assert any(cfg.ingest.work.iterdir())
    store.ack([jobs[1].id])
    pipeline.on_delivered(jobs[1].payload)
    assert not any(cfg.ingest.work.iterdir())
    (done,) = cfg.ingest.done.iterdir()
    assert sorted(p.name for p in (done / "source").iterdir()) == [
        "12345_ACC9_wound.jpg",
        "12345_ACC9_wound.jpg.json",
    ]
    assert (done / "dicom" / "12345_ACC9_wound.jpg.dcm").exists()


def test_redrop_yields_same_sop_instance_uid_and_sends_again(cfg: Config) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    data = jpeg(2)
    pipeline.take(drop(cfg, "photo.jpg", data))
    first = {j.dedup_key for j in deliver_jobs(store)}
    ack_all(store, pipeline)
    assert not any(cfg.ingest.work.iterdir())
    # dropped again (e.g. the PACS lost it): the same object is sent again, no new UID
    pipeline.take(drop(cfg, "photo.jpg", data))
    jobs = deliver_jobs(store)
    assert {j.dedup_key for j in jobs} == first
    assert len(jobs) == 2  # one per destination: re-armed, not duplicated
    assert {j.state for j in jobs} == {JobState.QUEUED}
    ack_all(store, pipeline)
    assert not any(cfg.ingest.work.iterdir())
    assert len(list(cfg.ingest.done.iterdir())) == 2


def test_inbox_on_another_file_system_is_claimed_by_copy(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    with tempfile.TemporaryDirectory(dir=shm) as inbox:
        table = {
            "node": {"base_dir": str(tmp_path)},
            "ingest": {"inbox": inbox, "defaults": {"ImageLaterality": "U"}},
            "destinations": [{"name": "a", "host": "127.0.0.1", "port": 104}],
        }
        cfg = config_from_dict(table, tmp_path)
        pipeline = IngestPipeline(cfg, JobStore(cfg.node.state_dir))
        image = drop(cfg, "share.jpg", jpeg(9))
        (cfg.ingest.inbox / "share.json").write_text('{"PatientID": "S1"}')
        pipeline.take(image)
        assert list(Path(inbox).iterdir()) == []
        (job,) = pipeline.store.select(kind="deliver")
        assert pydicom.dcmread(job.payload["path"]).PatientID == "S1"


def test_work_folders_on_different_file_systems_are_refused(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    with tempfile.TemporaryDirectory(dir=shm) as quarantine:
        table = {"node": {"base_dir": str(tmp_path)}, "ingest": {"quarantine": quarantine}}
        cfg = config_from_dict(table, tmp_path)
        with pytest.raises(ConfigError, match="ingest.quarantine"):
            IngestPipeline(cfg, JobStore(cfg.node.state_dir))


def test_folder_becomes_one_series_in_name_order(cfg: Config) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    folder = cfg.ingest.inbox / "visit"
    folder.mkdir(parents=True)
    for name, seed in (("b.jpg", 3), ("a.jpg", 4), ("c.jpg", 5)):
        (folder / name).write_bytes(jpeg(seed))
    pipeline.take(folder)
    datasets = {
        Path(j.payload["path"]).name.removeprefix("visit_"): pydicom.dcmread(j.payload["path"])
        for j in deliver_jobs(store)
        if j.destination == "a"
    }
    assert {ds.InstanceNumber for ds in datasets.values()} == {1, 2, 3}
    assert datasets["a.jpg.dcm"].InstanceNumber == 1
    assert datasets["c.jpg.dcm"].InstanceNumber == 3
    assert len({ds.SeriesInstanceUID for ds in datasets.values()}) == 1
    assert len({ds.StudyInstanceUID for ds in datasets.values()}) == 1


def test_delivering_a_folder_costs_linear_work(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each delivery of a claim checks whether the claim is complete: from the first
    object on, and with its claim.json read again, a folder of n images cost n²/2 job
    look-ups (33 s of the delivery thread for 2,000 images)."""
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    folder = cfg.ingest.inbox / "many"
    folder.mkdir(parents=True)
    n = 40
    for i in range(n):
        (folder / f"img{i:03d}.jpg").write_bytes(jpeg(100 + i))
    pipeline.take(folder)
    jobs = sorted(deliver_jobs(store), key=lambda j: j.id)
    assert len(jobs) == 2 * n
    lookups = 0
    find = store.find

    def counted(*args: object) -> object:
        nonlocal lookups
        lookups += 1
        return find(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "find", counted)
    reads = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(
        Path, "read_bytes", lambda self: reads.append(self.name) or read_bytes(self)
    )
    for job in jobs:
        store.ack([job.id])
        pipeline.on_delivered(job.payload)
    assert not any(cfg.ingest.work.iterdir())  # finished
    assert lookups <= 4 * len(jobs), lookups  # quadratic: ~n² = 1,600 for 80 jobs
    assert CLAIM_FILE not in reads  # kept since the claim was processed


def bmp(seed: int) -> bytes:
    """An uncompressed image: the same size for every seed (a scanner's pages)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "BMP")
    return buf.getvalue()


def test_two_folders_of_one_name_and_equal_sizes_are_two_studies(cfg: Config) -> None:
    """A folder's Study/Series UIDs came from its name and its files' names and sizes: a
    scanner dropping "scan/page1.bmp" every day (uncompressed pages: always one size) gave
    every day's pages, whoever the patient, the same Study and Series Instance UID."""
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    studies = []
    for seed in (1, 2, 1):
        folder = cfg.ingest.inbox / "scan"
        folder.mkdir(parents=True)
        (folder / "page1.bmp").write_bytes(bmp(seed))
        pipeline.take(folder)
        (job,) = [j for j in deliver_jobs(store) if j.destination == "a" and j.state == "queued"]
        ds = pydicom.dcmread(job.payload["path"])
        studies.append((ds.StudyInstanceUID, ds.SeriesInstanceUID))
        ack_all(store, pipeline)
    assert studies[0][0] != studies[1][0] and studies[0][1] != studies[1][1]
    assert studies[2] == studies[0]  # the same folder dropped again: the same UIDs


def test_corrupt_image_is_quarantined_with_reason(cfg: Config) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    data = jpeg(6)
    pipeline.take(drop(cfg, "broken.jpg", data[: len(data) // 2]))
    pipeline.take(drop(cfg, "notes.jpg", b"this is text, not a JPEG\n"))
    assert deliver_jobs(store) == []
    q = cfg.ingest.quarantine
    assert (q / "broken.jpg").exists() and (q / "notes.jpg").exists()
    reason = (q / "broken.jpg.error.txt").read_text()
    assert "broken.jpg" in reason and "reason:" in reason
    assert store.counters()["quarantined"] == 2
    assert not any(cfg.ingest.work.iterdir())


def test_dicom_files_are_queued_as_they_are(cfg: Config, tmp_path: Path) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    (single,) = write_ct_series(tmp_path / "one", count=1)
    original = single.read_bytes()
    pipeline.take(drop(cfg, "ct.dcm", original))
    (job, _) = sorted(deliver_jobs(store), key=lambda j: j.destination)
    assert Path(job.payload["path"]).read_bytes() == original  # not converted


# pydicom's FileSet stages files in a TemporaryDirectory it leaves to the garbage collector.
unclosed_tempdir = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


@unclosed_tempdir
def test_dicomdir_file_set_resolves_references_inside_the_folder(
    cfg: Config, tmp_path: Path
) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    series = write_ct_series(tmp_path / "src", count=3)
    fs = FileSet()
    for path in series:
        fs.add(pydicom.dcmread(path))
    cd = cfg.ingest.inbox / "patient-cd"
    cd.parent.mkdir(parents=True, exist_ok=True)
    fs.write(cd)
    del fs
    gc.collect()  # FileSet's staging TemporaryDirectory is cleaned up here, under the filter
    pipeline.take(cd)
    uids = {j.dedup_key for j in deliver_jobs(store)}
    assert uids == {pydicom.dcmread(p).SOPInstanceUID for p in series}


@unclosed_tempdir
def test_dicomdir_reference_outside_the_folder_is_refused(cfg: Config, tmp_path: Path) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    series = write_ct_series(tmp_path / "src", count=1)
    fs = FileSet()
    fs.add(pydicom.dcmread(series[0]))
    cd = cfg.ingest.inbox / "evil-cd"
    cd.parent.mkdir(parents=True, exist_ok=True)
    fs.write(cd)
    del fs
    gc.collect()
    dicomdir = pydicom.dcmread(cd / "DICOMDIR")
    with pydicom.config.disable_value_validation():  # a hostile CD does not validate either
        for record in dicomdir.DirectoryRecordSequence:
            if "ReferencedFileID" in record:
                record.ReferencedFileID = ["..", "..", "..", "etc", "passwd"]
        dicomdir.save_as(cd / "DICOMDIR")
    pipeline.take(cd)
    assert deliver_jobs(store) == []
    assert (cfg.ingest.quarantine / "evil-cd").is_dir()
    assert "ReferencedFileID" in (cfg.ingest.quarantine / "evil-cd.error.txt").read_text()


def test_recover_processes_a_claim_cut_short_by_a_crash(cfg: Config) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    claim = pipeline.claim(drop(cfg, "late.jpg", jpeg(7)))
    assert claim is not None and not (claim / CLAIM_FILE).exists()  # "killed" here
    restarted = IngestPipeline(cfg, JobStore(cfg.node.state_dir))
    restarted.recover()
    assert (claim / CLAIM_FILE).exists()
    assert len(deliver_jobs(store)) == 2
    assert {j.state for j in deliver_jobs(store)} == {JobState.QUEUED}


@pytest.mark.parametrize("sidecar_name", ["12345_ACC9_cut.jpg.json", "12345_ACC9_cut.json"])
def test_a_kill_between_image_and_sidecar_keeps_the_sidecar(
    cfg: Config, monkeypatch: pytest.MonkeyPatch, sidecar_name: str
) -> None:
    """The image is claimed and the node dies before its sidecar follows: the resumed
    claim converts it with its sidecar (not with empty patient data, the sidecar ending
    in quarantine as an orphan)."""
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    image = drop(cfg, "12345_ACC9_cut.jpg", jpeg(8))
    (cfg.ingest.inbox / sidecar_name).write_text(json.dumps({"PatientName": "Cut^Short"}))
    monkeypatch.setattr(IngestPipeline, "_take_sidecar", lambda *args: None)  # "killed"
    claim = pipeline.claim(image)
    monkeypatch.undo()
    assert claim is not None and (cfg.ingest.inbox / sidecar_name).exists()
    IngestPipeline(cfg, JobStore(cfg.node.state_dir)).recover()
    assert not any(cfg.ingest.inbox.iterdir())
    assert sorted(p.name for p in (claim / "src").iterdir()) == sorted(
        ["12345_ACC9_cut.jpg", sidecar_name]
    )
    assert not (claim / "sidecar.pending").exists()
    ds = pydicom.dcmread(deliver_jobs(store)[0].payload["path"])
    assert str(ds.PatientName) == "Cut^Short"


def test_a_kill_between_quarantining_an_image_and_its_sidecar_keeps_the_sidecar(
    cfg: Config,
) -> None:
    """The image went to quarantine and the node died before its sidecar followed: the
    resumed claim holds only the sidecar, which must not be deleted with the empty claim."""
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    image = drop(cfg, "bad.jpg", jpeg(10)[:200])
    (cfg.ingest.inbox / "bad.jpg.json").write_text(json.dumps({"PatientName": "Keep^Me"}))
    claim = pipeline.claim(image)
    assert claim is not None
    cfg.ingest.quarantine.mkdir(parents=True, exist_ok=True)
    (claim / "src" / "bad.jpg").rename(cfg.ingest.quarantine / "bad.jpg")  # "killed" here
    IngestPipeline(cfg, JobStore(cfg.node.state_dir)).recover()
    assert not any(cfg.ingest.work.iterdir())
    kept = cfg.ingest.quarantine / "bad.jpg.json"
    assert json.loads(kept.read_text()) == {"PatientName": "Keep^Me"}
    assert (
        "its image was quarantined"
        in (cfg.ingest.quarantine / "bad.jpg.json.error.txt").read_text()
    )


def test_a_sidecar_dropped_after_the_claim_is_not_taken_on_resume(cfg: Config) -> None:
    """Only a claim cut short between its two renames fetches a sidecar from the inbox: a
    later NAME.json (for a new drop of that name) stays where it is."""
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    claim = pipeline.claim(drop(cfg, "12345_ACC9_new.jpg", jpeg(9)))
    assert claim is not None  # "killed" before processing
    later = cfg.ingest.inbox / "12345_ACC9_new.jpg.json"
    later.write_text(json.dumps({"PatientName": "Next^Drop"}))
    IngestPipeline(cfg, JobStore(cfg.node.state_dir)).recover()
    assert later.exists()
    ds = pydicom.dcmread(deliver_jobs(store)[0].payload["path"])
    assert str(ds.PatientName) == ""


def test_claim_resumed_after_a_crash_neither_recounts_nor_resends(cfg: Config) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    claim = pipeline.claim(drop(cfg, "once.jpg", jpeg(11)))
    assert claim is not None
    pipeline.process(claim)
    ack_all(store, pipeline)  # delivered everywhere, claim finished...
    # ... but say the node died after committing the jobs and before writing claim.json:
    claim = pipeline.claim(drop(cfg, "twice.jpg", jpeg(12)))
    assert claim is not None
    pipeline.process(claim)
    (claim / CLAIM_FILE).unlink()
    for job in deliver_jobs(store):
        store.ack([job.id])  # the deliveries went through before the crash
    restarted = IngestPipeline(cfg, JobStore(cfg.node.state_dir))
    restarted.recover()
    assert store.counters()["ingested"] == 2
    assert {j.state for j in deliver_jobs(store)} == {JobState.DONE}  # nothing sent again
    assert not any(cfg.ingest.work.iterdir())


def test_recover_drops_partial_copies_and_temporary_files(cfg: Config) -> None:
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    claim = pipeline.claim(drop(cfg, "real.jpg", jpeg(13)))
    assert claim is not None
    (claim / "src" / ".share.jpg.copying").write_bytes(jpeg(14)[:100])  # cut-short copy
    leftover = cfg.ingest.outgoing / claim.name / ".tmp-abc123"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file")
    cfg.ingest.quarantine.mkdir(parents=True, exist_ok=True)
    note = cfg.ingest.quarantine / ".tmp-note12"  # a quarantine note cut short
    note.write_bytes(b"file: x")
    IngestPipeline(cfg, JobStore(cfg.node.state_dir)).recover()
    assert not leftover.exists()
    assert not note.exists()
    assert not (claim / "src" / ".share.jpg.copying").exists()
    assert {Path(j.payload["path"]).name for j in deliver_jobs(store)} == {"real.jpg.dcm"}
    assert not any(cfg.ingest.quarantine.iterdir())


def test_check_config_refuses_work_folders_on_different_file_systems(tmp_path: Path) -> None:
    from node import cli

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nbase_dir = "{tmp_path}"\n[ingest]\nwork = "/dev/shm/dn-x/w"\n')
    assert cli.main(["check-config", "-c", str(config)]) == 2
    assert not Path("/dev/shm/dn-x").exists()  # checking creates nothing


def test_a_full_disk_defers_the_claim_instead_of_quarantining(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from node.ingest import pipeline as pipeline_module

    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    real_convert = pipeline_module.convert_file

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline_module, "convert_file", disk_full)
    pipeline.take(drop(cfg, "full.jpg", jpeg(21)))
    # Not the input's fault: nothing in quarantine, the claim waits in work/.
    assert not cfg.ingest.quarantine.exists() or not any(cfg.ingest.quarantine.iterdir())
    (claim,) = cfg.ingest.work.iterdir()
    assert (claim / "src" / "full.jpg").exists() and not (claim / CLAIM_FILE).exists()
    assert pipeline.deferred == {claim.name}
    pipeline.sweep()  # still full: stays deferred
    assert pipeline.deferred == {claim.name} and deliver_jobs(store) == []

    monkeypatch.setattr(pipeline_module, "convert_file", real_convert)  # space again
    pipeline.sweep()
    assert pipeline.deferred == set()
    assert (claim / CLAIM_FILE).exists()
    assert {Path(j.payload["path"]).name for j in deliver_jobs(store)} == {"full.jpg.dcm"}
    assert store.counters()["ingested"] == 1


def test_an_unwritable_store_defers_the_claim(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    real_enqueue = pipeline._enqueue

    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(pipeline, "_enqueue", full)
    pipeline.take(drop(cfg, "nodb.jpg", jpeg(22)))
    (claim,) = cfg.ingest.work.iterdir()
    assert pipeline.deferred == {claim.name}
    monkeypatch.setattr(pipeline, "_enqueue", real_enqueue)
    pipeline.sweep()
    assert (claim / CLAIM_FILE).exists() and len(deliver_jobs(store)) == 2


def test_a_claim_whose_done_jobs_were_purged_still_finishes(cfg: Config) -> None:
    """`queue purge --state done` (a nightly clean-up) while destination b is down: a's
    done job went, and the claim waited in work/ for a job that no longer existed, until
    the next restart. The running node queues it again and the claim finishes."""
    store = JobStore(cfg.node.state_dir)
    pipeline = IngestPipeline(cfg, store)
    pipeline.take(drop(cfg, "123_ACC1_photo.jpg", jpeg(1)))
    (job_a,) = [j for j in deliver_jobs(store) if j.destination == "a"]
    store.ack([job_a.id])
    pipeline.on_delivered(job_a.payload)
    assert store.purge(JobState.DONE) == 1

    pipeline.sweep()
    assert {j.destination for j in deliver_jobs(store)} == {"a", "b"}
    ack_all(store, pipeline)
    pipeline.sweep()
    assert list(cfg.ingest.work.iterdir()) == []
    assert [p.name for p in (next(cfg.ingest.done.iterdir()) / "source").iterdir()] == [
        "123_ACC1_photo.jpg"
    ]
    store.close()
