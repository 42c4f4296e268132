"""C-STORE from DCMTK: every object stored as sent, in the right place, with its jobs."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.queue.store import JobState
from tests.receive.helpers import (
    archive_target,
    archived,
    dataset_bytes,
    dcmsend,
    echoscu,
    image_dataset,
    renamed_copy,
    running_scp,
    sample_files,
)

pytestmark = pytest.mark.dcmtk

UNCOMPRESSED_OTHER = {ImplicitVRLittleEndian, ExplicitVRBigEndian}


def _check_stored(root: Path, sources: list[Path]) -> None:
    from pydicom import dcmread

    stored = archived(root)
    assert len(stored) == len(sources)
    for src in sources:
        ds, target = archive_target(root, src)
        assert target.is_file(), f"{src.name} not stored at {target}"
        src_ts, src_data = dataset_bytes(src)
        dst_ts, dst_data = dataset_bytes(target)
        if dst_ts == src_ts:
            assert dst_data == src_data, f"{src.name}: data set bytes differ"
        else:
            # The sender offered several syntaxes for the SOP class and we preferred
            # Explicit VR LE (big endian and implicit last): DCMTK re-encoded, losslessly.
            assert src_ts in UNCOMPRESSED_OTHER and dst_ts == ExplicitVRLittleEndian
            got, sent = dcmread(target), dcmread(src)
            if "PixelData" in sent:
                assert (got.pixel_array == sent.pixel_array).all()
                del got.PixelData, sent.PixelData
            with warnings.catch_warnings():  # pydicom's sample data has odd UIDs
                warnings.simplefilter("ignore")
                assert got.to_json_dict() == sent.to_json_dict()
        meta = dcmread(target, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.SourceApplicationEntityTitle == "MODALITY"


def test_one_association_stores_every_sample_byte_identical(tmp_path: Path) -> None:
    files = sample_files(tmp_path / "src")
    with running_scp(tmp_path / "node") as (scp, store, cfg):
        res = dcmsend(scp.port, files)
        assert res.returncode == 0, res.stderr
        _check_stored(scp.archive_root, files)
        jobs = store.select(kind="export_instance")
        assert len(jobs) == len(files)
        job = jobs[0]
        assert Path(job.payload["path"]).is_file()
        assert job.payload["calling_ae"] == "MODALITY"
        assert job.dedup_key == job.payload["sop_instance_uid"]
        assert store.counters()["received"] == len(files)
        assert echoscu(scp.port).returncode == 0
    assert not list((tmp_path / "node").rglob(".tmp-*"))


def test_concurrent_associations(tmp_path: Path) -> None:
    files = sample_files(tmp_path / "src")
    more = [renamed_copy(f, tmp_path / "src2" / f.name) for f in files]
    all_files = files + more
    groups = [all_files[i::4] for i in range(4)]
    with running_scp(tmp_path / "node") as (scp, store, cfg):
        procs = [
            subprocess.Popen(
                ["/usr/bin/dcmsend", "-aet", "MODALITY", "-aec", "DICOMNODE", "127.0.0.1"]
                + [str(scp.port)]
                + [str(f) for f in group],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
            )
            for group in groups
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        _check_stored(scp.archive_root, all_files)
        assert len(store.select(kind="export_instance")) == len(all_files)


def test_study_complete_job_waits_for_the_quiet_period(tmp_path: Path) -> None:
    src = tmp_path / "src"
    study = "1.2.826.0.1.3680043.8.498.1"
    a = renamed_copy(Path(str(sample_path("CT_small.dcm"))), src / "a.dcm", study)
    b = renamed_copy(Path(str(sample_path("MR_small.dcm"))), src / "b.dcm", study)
    with running_scp(tmp_path / "node", study_quiet_seconds=30.0) as (scp, store, cfg):
        before = time.time()
        assert dcmsend(scp.port, [a, b]).returncode == 0
        jobs = store.select(kind="study_complete")
        assert len(jobs) == 1
        job = jobs[0]
        assert job.dedup_key == study
        assert job.next_attempt_at >= before + 30.0
        assert len(job.payload["series"]) == 2
        assert job.payload["instances"] == 2
        assert sorted(job.payload["modalities"]) == ["CT", "MR"]
        assert job.payload["archive_dir"] == str(scp.archive_root / study)
        # Not claimable during the quiet period ...
        assert store.claim("test", kinds=["study_complete"]) == []
    # ... and claimable once it has passed (quiet = 0: immediately).
    with running_scp(tmp_path / "node2", study_quiet_seconds=0.0) as (scp, store, cfg):
        assert dcmsend(scp.port, [a]).returncode == 0
        claimed = store.claim("test", kinds=["study_complete"])
        assert [j.dedup_key for j in claimed] == [study]
        # A late instance re-arms the done job.
        store.ack([claimed[0].id])
        assert dcmsend(scp.port, [b]).returncode == 0
        again = store.get(claimed[0].id)
        assert again is not None and again.state == JobState.QUEUED
        assert again.payload["instances"] == 2


def sample_path(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None
    return str(path)


def test_pixel_length_mismatch_is_stored_and_flagged(tmp_path: Path) -> None:
    ds = image_dataset(512, 512, b"\x00" * 100)
    src = tmp_path / "bad.dcm"
    ds.save_as(src, enforce_file_format=True)
    with running_scp(tmp_path / "node") as (scp, store, cfg):
        res = dcmsend(scp.port, [src])
        assert res.returncode == 0, res.stderr
        stored = archived(scp.archive_root)
        assert len(stored) == 1
        assert dataset_bytes(stored[0])[1] == dataset_bytes(src)[1]
        (job,) = store.select(kind="export_instance")
        assert job.payload["flags"] == ["pixel_length_mismatch"]
        with store.transaction() as db:
            rows = db.execute("SELECT flags FROM received_instances").fetchall()
        found = [json.loads(r[0]) for r in rows]
        assert found == [["pixel_length_mismatch"]]


@pytest.mark.parametrize("policy", ["keep", "overwrite"])
def test_duplicate_policy(tmp_path: Path, policy: str) -> None:
    from pydicom import dcmread

    first = tmp_path / "first.dcm"
    image_dataset(
        2, 2, b"\x01\x02\x03\x04", sop="1.2.3.4.1", study="1.2.3", series="1.2.3.4"
    ).save_as(first, enforce_file_format=True)
    second = tmp_path / "second.dcm"
    ds = dcmread(first)
    ds.PixelData = b"\x09\x09\x09\x09"
    ds.save_as(second, enforce_file_format=True)
    with running_scp(tmp_path / "node", duplicates=policy) as (scp, store, cfg):
        assert dcmsend(scp.port, [first]).returncode == 0
        assert dcmsend(scp.port, [second]).returncode == 0
        (stored,) = archived(scp.archive_root)
        expected = first if policy == "keep" else second
        assert dataset_bytes(stored)[1] == dataset_bytes(expected)[1]


def test_large_object_received_in_chunks_to_disk(tmp_path: Path) -> None:
    pixels = bytes(range(256)) * (3 * 1024 * 4)  # 3 MiB
    ds = image_dataset(2048, 1536, pixels)
    src = tmp_path / "big.dcm"
    ds.save_as(src, enforce_file_format=True)
    with running_scp(tmp_path / "node", chunk_threshold_bytes=256 * 1024) as (scp, store, cfg):
        res = dcmsend(scp.port, [src])
        assert res.returncode == 0, res.stderr
        (stored,) = archived(scp.archive_root)
        assert dataset_bytes(stored)[1] == dataset_bytes(src)[1]
        assert list((scp.archive_root / ".incoming").iterdir()) == []


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("policy", ["keep", "overwrite"])
def test_one_instance_sent_on_two_associations_at_once_is_one_file(
    tmp_path: Path, policy: str, fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two senders store the same SOP Instance UID (under two studies) at the same moment:
    both used to find it unrecorded and leave two files. The ledger lookup is made to wait
    for the other store; with the per-instance lock the other store never gets there first,
    the wait times out and the second store sees the first one's record."""
    from node.receive.ledger import Ledger

    meet = threading.Barrier(2, timeout=2)
    lookup = Ledger.lookup

    def lookup_together(self: Ledger, uid: str) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait()
        return lookup(self, uid)

    monkeypatch.setattr(Ledger, "lookup", lookup_together)
    files = []
    for study in ("1.2.3", "1.2.9"):
        f = tmp_path / f"{study}.dcm"
        image_dataset(
            2, 2, b"\x01\x02\x03\x04", sop="1.2.3.4.8", study=study, series=f"{study}.4"
        ).save_as(f, enforce_file_format=True)
        files.append(f)
    with running_scp(tmp_path / "node", duplicates=policy, fast_path=fast_path) as (
        scp,
        store,
        _,
    ):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda f: dcmsend(scp.port, [f]), files))
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
        (stored,) = archived(scp.archive_root)
        with store.transaction() as db:
            (row,) = db.execute("SELECT study_uid, path FROM received_instances").fetchall()
        assert Path(row[1]) == stored and stored.parent.parent.name == row[0]


@pytest.mark.parametrize("policy", ["keep", "overwrite"])
def test_duplicate_under_another_study_is_one_file(tmp_path: Path, policy: str) -> None:
    """The same SOP Instance UID re-sent with a corrected Study/Series Instance UID."""
    first = tmp_path / "first.dcm"
    image_dataset(
        2, 2, b"\x01\x02\x03\x04", sop="1.2.3.4.7", study="1.2.3", series="1.2.3.4"
    ).save_as(first, enforce_file_format=True)
    second = tmp_path / "second.dcm"
    image_dataset(
        2, 2, b"\x09\x09\x09\x09", sop="1.2.3.4.7", study="1.2.9", series="1.2.9.4"
    ).save_as(second, enforce_file_format=True)
    with running_scp(tmp_path / "node", duplicates=policy) as (scp, store, _):
        assert dcmsend(scp.port, [first]).returncode == 0
        assert dcmsend(scp.port, [second]).returncode == 0
        (stored,) = archived(scp.archive_root)
        expected = first if policy == "keep" else second
        assert dataset_bytes(stored)[1] == dataset_bytes(expected)[1]
        assert stored.parent.parent.name == ("1.2.3" if policy == "keep" else "1.2.9")
        (job,) = store.select(kind="export_instance")
        assert Path(job.payload["path"]) == stored
        # The study now holding the instance counts it (a corrected study's payload said
        # 0 instances: the instance was not new to the ledger, so not counted anywhere).
        studies = {j.payload["study_uid"]: j.payload for j in store.select(kind="study_complete")}
        holder = studies[stored.parent.parent.name]
        assert holder["instances"] == 1
        assert holder["series"] == [stored.parent.name]


@pytest.mark.parametrize("fast_path", [True, False])
def test_archive_directories_removed_by_a_clean_up_job_are_recreated(
    tmp_path: Path, fast_path: bool
) -> None:
    """``find ARCHIVE -type d -empty -delete`` (a retention job) removes the empty
    ``.incoming`` between associations, and the root once it holds nothing else: every
    later C-STORE was refused 0xA700 until a restart. Objects over the chunk threshold
    exercise the spill file of pynetdicom's path too."""
    import shutil

    sources = []
    for n in range(3):
        src = tmp_path / f"obj{n}.dcm"
        image_dataset(512, 512, bytes([n]) * (512 * 512)).save_as(src, enforce_file_format=True)
        sources.append(src)
    with running_scp(
        tmp_path / "node",
        fast_path=fast_path,
        chunk_threshold_bytes=64 * 1024,
        min_free_bytes=1,  # the free-space check looks at the root too
    ) as (scp, store, cfg):
        root = scp.archive_root
        incoming = root / ".incoming"
        res = dcmsend(scp.port, [sources[0]])
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 10  # the ended association drops its spare file
        while any(incoming.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        subprocess.run(["find", str(root), "-type", "d", "-empty", "-delete"], check=True)
        assert not incoming.exists()
        res = dcmsend(scp.port, [sources[1]])
        assert res.returncode == 0, res.stdout + res.stderr
        assert len(archived(root)) == 2, res.stdout + res.stderr  # was refused 0xA700
        shutil.rmtree(root)  # the whole archive gone
        res = dcmsend(scp.port, [sources[2]])
        assert res.returncode == 0, res.stdout + res.stderr
        stored = archived(root)
        assert [dataset_bytes(p)[1] for p in stored] == [dataset_bytes(sources[2])[1]]
        assert len(store.select(kind="export_instance")) == 3
        assert incoming.is_dir()
