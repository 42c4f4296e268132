"""Unit tests of the pieces under the SCP: header walker, file meta, spill buffer, rules."""

from __future__ import annotations

import glob
import os
import shutil
import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble

from node.config import ForwardRule
from node.errors import UnsafePath
from node.receive import header as H
from node.receive.archive import Archive, file_meta_bytes
from node.receive.guard import SpillBuffer, pdu_cap
from node.receive.studies import forward_destinations


def _dataset_part(path: str) -> tuple[bytes, bool, bool]:
    raw = Path(path).read_bytes()
    fp = BytesIO(raw)
    read_preamble(fp, False)
    ts = _read_file_meta_info(fp).TransferSyntaxUID
    return raw[fp.tell() :], ts.is_implicit_VR, ts.is_little_endian


def _test_files() -> list[str]:
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    return sorted(glob.glob(str(Path(ct).parent / "*.dcm")))


def test_fast_walker_agrees_with_pydicom_on_every_sample() -> None:
    compared = 0
    for path in _test_files():
        try:
            data, implicit, little = _dataset_part(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                slow = H.read_header(BytesIO(data), implicit, little)  # pydicom path
        except Exception:
            continue  # no file meta, deflated, truncated: not a walker question
        try:
            fast = H._fast_header(data, implicit, little)
        except H._Unusual:
            continue  # left to pydicom on purpose
        fast.flags.extend(H.pixel_flags(fast))
        assert fast == slow, path
        assert fast.absent == slow.absent, path
        compared += 1
    assert compared > 50


def test_header_from_a_spilled_file(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data, implicit, little = _dataset_part(path)
    spill = tmp_path / "spill"
    spill.write_bytes(data)
    assert H.read_header_file(spill, implicit, little) == H.read_header(data, implicit, little)
    # A 4 GB length before Pixel Data: no huge read, the SOP Class before it is found.
    import struct

    bogus = tmp_path / "bogus"
    bogus.write_bytes(
        struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 4)
        + b"1.2\x00"
        + struct.pack("<HH2sHL", 0x0010, 0x0010, b"OB", 0, 0xFFFFFFF0)
        + b"x" * 4096
    )
    header = H.read_header_file(bogus, False, True)
    assert header.sop_class_uid == "1.2" and header.study_uid == ""


def test_walker_falls_back_on_truncated_data() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data, implicit, little = _dataset_part(path)
    cut = data[:1001]  # ends inside an element
    with pytest.raises(H._Unusual):
        H._fast_header(cut, implicit, little)
    # read_header itself survives: pydicom reads what is there, or HeaderError.
    try:
        header = H.read_header(cut, implicit, little)
    except H.HeaderError:
        return
    assert header.sop_class_uid


def test_pixel_flags() -> None:
    ok = H.Header(rows=2, columns=3, bits_allocated=8, samples_per_pixel=1, pixel_length=6)
    assert H.pixel_flags(ok) == []
    padded = H.Header(rows=1, columns=3, bits_allocated=8, pixel_length=4)
    assert H.pixel_flags(padded) == []
    wrong = H.Header(rows=512, columns=512, bits_allocated=16, pixel_length=100)
    assert H.pixel_flags(wrong) == ["pixel_length_mismatch"]
    encapsulated = H.Header(rows=512, columns=512, bits_allocated=8, pixel_length=-1)
    assert H.pixel_flags(encapsulated) == []


def test_file_meta_is_valid_part10(tmp_path: Path) -> None:
    meta = file_meta_bytes("1.2.840.10008.5.1.4.1.1.7", "1.2.3.45", "1.2.840.10008.1.2.1", "MOD")
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data, _, _ = _dataset_part(path)
    out = tmp_path / "x.dcm"
    out.write_bytes(meta + data)
    ds = dcmread(out)
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.file_meta.SourceApplicationEntityTitle == "MOD"
    assert ds.file_meta.FileMetaInformationGroupLength == len(meta) - 128 - 4 - 12


@pytest.mark.parametrize(
    "bad", ["../x", "1.2/3", "1..2", ".1", "1.", "", "1" * 65, "1.2\x00", "1.2\n"]
)
def test_archive_refuses_unsafe_uids(tmp_path: Path, bad: str) -> None:
    archive = Archive(tmp_path)
    with pytest.raises(UnsafePath):
        archive.path_for(bad, "1.2", "1.3")
    with pytest.raises(UnsafePath):
        archive.path_for("1.1", "1.2", bad)


def test_spill_buffer_moves_to_disk_past_threshold(tmp_path: Path) -> None:
    spilled: list[SpillBuffer] = []
    archive = Archive(tmp_path)
    archive.prepare()
    buf = SpillBuffer(1000, lambda: archive.new_incoming_file("spill"), spilled.append)
    buf.write(b"a" * 600)
    assert not buf.spilled and spilled == []
    buf.write(b"b" * 600)
    assert buf.spilled and spilled == [buf]
    buf.write(b"c" * 10)
    path = buf.finish()
    assert path.parent == tmp_path / ".incoming" and path.name.startswith(".tmp-spill-")
    assert path.read_bytes() == b"a" * 600 + b"b" * 600 + b"c" * 10
    assert len(buf.getbuffer()) == 0  # nothing left in memory
    buf.discard()
    assert not path.exists()


def test_spill_buffer_stops_a_stream_that_would_fill_the_disk(tmp_path: Path) -> None:
    from node.receive.archive import OutOfSpace

    archive = Archive(tmp_path, min_free_bytes=1 << 62)
    archive.prepare()
    buf = SpillBuffer(
        10, lambda: archive.new_incoming_file("spill"), lambda b: None, archive.check_space
    )
    buf.CHECK_EVERY = 100
    buf.write(b"x" * 20)  # spilled
    with pytest.raises(OutOfSpace):
        for _ in range(10):
            buf.write(b"y" * 50)
    buf.discard()


def test_incoming_files_are_new_and_survive_a_removed_incoming_directory(tmp_path: Path) -> None:
    """Staging and spill files come from one place: a new name each time (O_EXCL), the
    archive's mode, and ``.incoming`` recreated if a clean-up job deleted it."""
    archive = Archive(tmp_path / "archive")
    archive.prepare()
    made = [archive.new_incoming_file(kind) for kind in ("rx", "spill", "rx")]
    for fd, _ in made:
        os.close(fd)
    paths = [path for _, path in made]
    assert len(set(paths)) == 3 and all(p.parent == archive.incoming for p in paths)
    assert [p.name.split("-")[1] for p in paths] == ["rx", "spill", "rx"]
    assert all(p.stat().st_mode & 0o777 == 0o644 & ~_umask() for p in paths)
    shutil.rmtree(archive.root)
    fd, path = archive.new_incoming_file("rx")
    os.close(fd)
    assert path.parent == archive.incoming and path.is_file()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_pdu_cap() -> None:
    assert pdu_cap(16384) == 1 << 20
    assert pdu_cap(4 << 20) == 4 << 20
    assert pdu_cap(0) == 64 << 20


def test_forward_rules() -> None:
    rules = [
        ForwardRule(destination="pacs"),
        ForwardRule(destination="ct-ai", modality="CT"),
        ForwardRule(destination="us-only", calling_ae="US1"),
    ]
    assert forward_destinations(rules, ["CT1"], ["CT"]) == ["pacs", "ct-ai"]
    assert forward_destinations(rules, ["US1"], ["US"]) == ["pacs", "us-only"]
    assert forward_destinations(rules[1:], ["MR1"], ["MR"]) == []


def test_study_job_replaced_while_claimed_runs_again(tmp_path: Path) -> None:
    """A late instance while the study job is being worked on: the job runs once more."""
    from node.queue.store import JobState, JobStore

    with JobStore(tmp_path) as store:
        job_id = store.enqueue("study_complete", {"n": 1}, dedup_key="1.2.3")
        (job,) = store.claim("worker", kinds=["study_complete"])
        store.enqueue("study_complete", {"n": 2}, dedup_key="1.2.3", replace=True)
        store.ack([job.id])
        again = store.get(job_id)
        assert again is not None and again.state == JobState.QUEUED
        assert again.payload == {"n": 2} and again.attempts == 0
        (job,) = store.claim("worker", kinds=["study_complete"])
        store.ack([job.id])
        done = store.get(job_id)
        assert done is not None and done.state == JobState.DONE
    # A database from before the column existed is migrated on open.
    with JobStore(tmp_path / "old") as store, store.transaction() as db:
        db.execute("ALTER TABLE jobs DROP COLUMN rerun_at")
    with JobStore(tmp_path / "old") as store, store.transaction() as db:
        columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
        assert "rerun_at" in columns


def test_uid_locks_serialise_one_uid_only_and_are_forgotten() -> None:
    import threading

    from node.receive.handlers import UidLocks

    locks = UidLocks()
    inside: list[str] = []

    def store(uid: str, name: str) -> threading.Thread:
        def hold() -> None:
            with locks.hold(uid):
                inside.append(name)

        thread = threading.Thread(target=hold)
        thread.start()
        return thread

    with locks.hold("1.2.3"):
        other = store("1.2.4", "another")
        other.join(2)
        assert not other.is_alive() and inside == ["another"]  # another UID does not wait
        waiter = store("1.2.3", "second")
        waiter.join(0.2)
        assert waiter.is_alive() and inside == ["another"]  # the same UID waits
    waiter.join(2)
    assert inside == ["another", "second"]
    assert locks._locks == {}
