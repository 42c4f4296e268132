"""The real SCU against in-process pynetdicom peers and DCMTK storescp (loopback only)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from node.config import Config, Destination, QueueSection
from node.queue.store import JobState, JobStore
from node.send.scu import StoreSCU
from node.send.worker import DeliveryWorker, enqueue_delivery
from tests.peers import LOOPBACK, Storescp, free_port
from tests.send.data import jpeg_object, native_sc
from tests.send.peers import answer_in_unproposed_syntax, rejecting_server, scripted_scp

# pynetdicom 3.0.4 leaks the socket of a refused connection (transport.py: shutdown() raises
# ENOTCONN before close()); the GC closes it with a ResourceWarning. Not ours to fix here.
PYNETDICOM_SOCKET_LEAK = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)


@pytest.fixture(autouse=True, params=["wire", "pynetdicom"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every SCU test runs with our data phase and with pynetdicom's DIMSE (the fallback)."""
    monkeypatch.setattr("node.send.scu.DEFAULT_ENGINE", request.param)
    return str(request.param)


def _dest(port: int, aet: str = "FAKEPACS", **kw: object) -> Destination:
    return Destination(name="pacs", host=LOOPBACK, port=port, called_ae=aet, **kw)  # type: ignore[arg-type]


def _worker(tmp_path: Path, dest: Destination) -> tuple[DeliveryWorker, JobStore]:
    cfg = Config(queue=QueueSection(retry_jitter=0.0), destinations=[dest])
    store = JobStore(tmp_path / "state", durable=False)
    return DeliveryWorker(cfg, dest, store, owner="test"), store


def _due_now(store: JobStore) -> None:
    store._db.execute("UPDATE jobs SET next_attempt_at=0 WHERE state='retry'")


def test_out_of_resources_three_times_then_delivered(tmp_path: Path) -> None:
    f = native_sc(tmp_path / "a.dcm")
    with scripted_scp([0xA700, 0xA700, 0xA700, 0x0000]) as scp:
        worker, store = _worker(tmp_path, _dest(scp.port))
        [jid] = enqueue_delivery(store, f, ["pacs"])
        for attempt in range(1, 4):
            assert worker.run_once() == 1
            job = store.get(jid)
            assert job is not None and job.state == JobState.RETRY
            assert job.attempts == attempt and "0xA700" in (job.last_error or "")
            assert scp.received == []
            _due_now(store)
        assert worker.run_once() == 1
    job = store.get(jid)
    assert job is not None and job.state == JobState.DONE and job.attempts == 4
    assert scp.received == [job.dedup_key]
    assert store.counters() == {"delivered": 1}


def test_cannot_understand_goes_dead_with_the_peer_status(tmp_path: Path) -> None:
    f = native_sc(tmp_path / "a.dcm")
    with scripted_scp([0xC000]) as scp:
        worker, store = _worker(tmp_path, _dest(scp.port))
        [jid] = enqueue_delivery(store, f, ["pacs"])
        worker.run_once()
        _due_now(store)
        assert worker.run_once() == 0
    job = store.get(jid)
    assert job is not None and job.state == JobState.DEAD
    assert "0xC000 (Cannot understand)" in (job.last_error or "")
    assert store.counters() == {"delivery_failed": 1}


def test_general_warning_statuses_are_delivered_with_the_warning_kept(tmp_path: Path) -> None:
    """0x0107 and 0x0116 are warnings (PS3.7 C.4.2; DCMTK's DICOM_WARNING_STATUS and
    pynetdicom agree): the peer stored the object, so the job is done, not dead."""
    files = [native_sc(tmp_path / f"{i}.dcm") for i in range(2)]
    with scripted_scp([0x0107, 0x0116]) as scp:
        worker, store = _worker(tmp_path, _dest(scp.port))
        for f in files:
            enqueue_delivery(store, f, ["pacs"])
        assert worker.run_once() == 2
    jobs = store.select()
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
    assert "0x0107 (Warning: attribute list error)" in (jobs[0].last_error or "")
    assert "0x0116 (Warning: attribute value out of range)" in (jobs[1].last_error or "")
    assert store.counters() == {"delivered": 2}


def test_one_bad_file_does_not_resend_the_batch(tmp_path: Path) -> None:
    files = [native_sc(tmp_path / f"{i}.dcm") for i in range(4)]
    with scripted_scp([0, 0xA900, 0, 0xA701]) as scp:
        worker, store = _worker(tmp_path, _dest(scp.port))
        for f in files:
            enqueue_delivery(store, f, ["pacs"])
        assert worker.run_once() == 4
        assert len(scp.received) == 2
    assert [j.state for j in store.select()] == [
        JobState.DONE,
        JobState.DEAD,
        JobState.DONE,
        JobState.RETRY,
    ]


def test_connection_lost_mid_batch_retries_the_file_in_flight_only(tmp_path: Path) -> None:
    files = [native_sc(tmp_path / f"{i}.dcm") for i in range(4)]
    with scripted_scp(drop_connection_at=2) as scp:
        worker, store = _worker(tmp_path, _dest(scp.port, dimse_timeout=5))
        for f in files:
            enqueue_delivery(store, f, ["pacs"])
        assert worker.run_once() == 2
        states = [(j.state, j.attempts) for j in store.select()]
        assert states == [
            (JobState.DONE, 1),
            (JobState.RETRY, 1),  # in flight when the connection went: not counted as sent
            (JobState.QUEUED, 0),  # not started: back in the queue, attempt not counted
            (JobState.QUEUED, 0),
        ]
        assert worker.run_once() == 2  # a new association for the rest
    assert [j.state for j in store.select()][2:] == [JobState.DONE, JobState.DONE]
    assert "delivered" in store.counters() and store.counters()["delivered"] == 3


def test_sop_class_not_accepted_is_dead_not_retried(tmp_path: Path, engine: str) -> None:
    f = native_sc(tmp_path / "a.dcm")
    with scripted_scp(sop_classes=(CTImageStorage,)) as scp:
        worker, store = _worker(tmp_path, _dest(scp.port))
        [jid] = enqueue_delivery(store, f, ["pacs"])
        worker.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.DEAD
    # Both engines name the peer's result from the A-ASSOCIATE-AC.
    assert job.last_error == (
        "SOP class Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7) "
        f"not accepted by AE FAKEPACS@{LOOPBACK}:{scp.port} "
        "(abstract-syntax-not-supported (provider rejection)); allow it on the PACS "
        "(Orthanc: UnknownSopClassAccepted for a class it does not know, DCMTK storescp: "
        "-pm), then `dicom-node queue retry`"
    )


JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"


def test_context_accepted_in_an_unproposed_syntax_is_left_out_and_the_rest_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A non-conformant peer accepts our JPEG Baseline context with JPEG Lossless, which we
    did not propose in it: the wire engine failed the whole association (retried for
    days). That context is now left out with a warning, and the file goes decompressed on
    the Explicit VR context the peer accepted as proposed."""
    answer_in_unproposed_syntax(monkeypatch, {JPEGBaseline8Bit: JPEG_LOSSLESS})
    f = jpeg_object(tmp_path / "j.dcm")
    with scripted_scp() as scp:
        worker, store = _worker(tmp_path, _dest(scp.port))
        [jid] = enqueue_delivery(store, f, ["pacs"])
        worker.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.DONE, job.last_error
    assert [str(ds.file_meta.TransferSyntaxUID) for ds in scp.datasets] == [ExplicitVRLittleEndian]
    [warning] = [r.getMessage() for r in caplog.records if r.name == "node.send.acse"]
    assert warning == (
        "the peer accepted presentation context 1 (Secondary Capture Image Storage "
        "(1.2.840.10008.5.1.4.1.1.7)) with transfer syntax JPEG Lossless, Non-Hierarchical, "
        "First-Order Prediction (Process 14 [Selection Value 1]) (1.2.840.10008.1.2.4.70), "
        "which was not proposed in it (proposed: JPEG Baseline (Process 1) "
        "(1.2.840.10008.1.2.4.50)): the peer is not conformant (PS3.8 9.3.3.2); the "
        "context is treated as not accepted"
    )


def test_no_context_accepted_in_a_proposed_syntax_is_dead_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every context answered in a syntax we did not propose: nothing can go, and the job
    says the peer is not conformant (dead, as any other context not accepted)."""
    answer_in_unproposed_syntax(
        monkeypatch, {ExplicitVRLittleEndian: JPEG_LOSSLESS, ImplicitVRLittleEndian: JPEG_LOSSLESS}
    )
    f = native_sc(tmp_path / "a.dcm")
    with scripted_scp() as scp:
        worker, store = _worker(tmp_path, _dest(scp.port))
        [jid] = enqueue_delivery(store, f, ["pacs"])
        worker.run_once()
        assert scp.received == []
    job = store.get(jid)
    assert job is not None and job.state == JobState.DEAD
    assert (job.last_error or "").startswith(
        "Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7): AE "
        f"FAKEPACS@{LOOPBACK}:{scp.port} accepted no presentation context for it with a "
        "transfer syntax we proposed (context 1 proposed with Explicit VR Little Endian, "
        "answered JPEG Lossless"
    )
    assert "the peer is not conformant (PS3.8 9.3.3.2" in (job.last_error or "")


def test_missing_response_is_retried_never_counted(tmp_path: Path) -> None:
    f = native_sc(tmp_path / "a.dcm")
    with scripted_scp(delay=1.5) as scp:
        dest = _dest(scp.port, dimse_timeout=0.3)
        worker, store = _worker(tmp_path, dest)
        [jid] = enqueue_delivery(store, f, ["pacs"])
        worker.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.RETRY
    assert "no C-STORE response" in (job.last_error or "")
    assert "delivered" not in store.counters()


def test_rejected_permanent_by_a_real_scp_is_dead(tmp_path: Path) -> None:
    f = native_sc(tmp_path / "a.dcm")
    with scripted_scp(require_called_aet=True) as scp:
        worker, store = _worker(tmp_path, _dest(scp.port, aet="WRONGAE"))
        [jid] = enqueue_delivery(store, f, ["pacs"])
        worker.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.DEAD
    assert "Rejected Permanent" in (job.last_error or "")
    assert "Called AE title not recognised" in (job.last_error or "")


@pytest.mark.parametrize("late", [False, True], ids=["", "requestor-late"])
def test_rejected_transient_is_retried(
    tmp_path: Path, engine: str, late: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``late``: a busy machine, where the A-ASSOCIATE-RJ arrives and the connection is
    closed before the requesting thread looks again. pynetdicom 3.0.4 then aborts without
    setting is_rejected; the job must still say why, and stay a retry."""
    if late and engine == "pynetdicom":
        from pynetdicom.acse import ACSE

        queue_request = ACSE.send_request

        def late_requestor(self: ACSE) -> None:
            queue_request(self)
            deadline = time.monotonic() + 5
            while self.dul.to_user_queue.empty() and time.monotonic() < deadline:
                time.sleep(0.01)  # the DUL connects and reads the RJ meanwhile ...
            time.sleep(0.2)  # ... and closes the connection

        monkeypatch.setattr(ACSE, "send_request", late_requestor)
    f = native_sc(tmp_path / "a.dcm")
    with rejecting_server(result=2, source=3, reason=1) as port:
        worker, store = _worker(tmp_path, _dest(port))
        [jid] = enqueue_delivery(store, f, ["pacs"])
        worker.run_once()
    job = store.get(jid)
    assert job is not None and job.state == JobState.RETRY
    assert "Rejected Transient" in (job.last_error or "")
    assert "Temporary congestion" in (job.last_error or "")


@PYNETDICOM_SOCKET_LEAK
def test_closed_port_retries_with_growing_backoff(tmp_path: Path) -> None:
    f = native_sc(tmp_path / "a.dcm")
    worker, store = _worker(tmp_path, _dest(free_port()))
    [jid] = enqueue_delivery(store, f, ["pacs"])
    delays = []
    for _ in range(3):
        worker.run_once()
        job = store.get(jid)
        assert job is not None and job.state == JobState.RETRY
        assert "cannot connect" in (job.last_error or "")
        delays.append(job.next_attempt_at - job.updated_at)
        _due_now(store)
    assert delays == pytest.approx([2.0, 4.0, 8.0], abs=0.05)


@PYNETDICOM_SOCKET_LEAK
def test_a_pacs_down_is_one_log_line_per_batch_not_one_per_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every job of a batch fails for the same reason when the PACS is down: each logged
    its own warning, so 10,000 queued jobs wrote 10,000 lines every retry round of a
    weekend outage. One line names the reason, one more counts the others."""
    files = [native_sc(tmp_path / f"{i}.dcm") for i in range(5)]
    worker, store = _worker(tmp_path, _dest(free_port()))
    for f in files:
        enqueue_delivery(store, f, ["pacs"])
    assert worker.run_once() == 5
    assert [j.state for j in store.select()] == [JobState.RETRY] * 5
    lines = [r.getMessage() for r in caplog.records if r.name == "node.send.worker"]
    assert lines == [
        "delivery failed, will retry",
        "4 more job(s) of this batch failed for the same reason, will retry",
    ]


@PYNETDICOM_SOCKET_LEAK
def test_echo(tmp_path: Path) -> None:
    with scripted_scp() as scp:
        assert StoreSCU(_dest(scp.port), calling_ae="ME").echo().delivered
    outcome = StoreSCU(_dest(free_port()), calling_ae="ME").echo()
    assert not outcome.delivered and "cannot connect" in outcome.reason


# ----------------------------------------------------------------------------- DCMTK storescp


def _send_all(dest: Destination, files: list[Path]) -> dict[str, str]:
    from node.send.contexts import SendItem
    from node.send.worker import read_header

    items = [SendItem(path=f, key=i, **read_header(f)) for i, f in enumerate(files)]
    out: dict[str, str] = {}
    StoreSCU(dest, calling_ae="DICOMNODE").send(
        items, lambda item, outcome: out.__setitem__(item.sop_instance_uid, outcome.describe())
    )
    return out


@pytest.mark.dcmtk
def test_storescp_defaults_get_jpeg_decoded_lossy_flag_kept(
    tmp_path: Path, storescp: Storescp
) -> None:
    with_flag = jpeg_object(tmp_path / "a.dcm", lossy_element=True)
    without_flag = jpeg_object(tmp_path / "b.dcm", seed=3)
    native = native_sc(tmp_path / "c.dcm", bits=12, size=16)
    dest = _dest(storescp.port, aet=storescp.aet)
    results = _send_all(dest, [with_flag, without_flag, native])
    assert set(results.values()) == {"delivered"}
    got = storescp.by_uid()
    assert len(got) == 3
    for src in (with_flag, without_flag):
        original = dcmread(src)
        received = dcmread(got[original.SOPInstanceUID])
        assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert received.LossyImageCompression == "01"
        # Added only where we had to set the flag ourselves; otherwise kept as it was.
        assert received.get("LossyImageCompressionMethod") == (
            None if src == with_flag else "ISO_10918_1"
        )
        assert received.PhotometricInterpretation == "RGB"
        # Same decoder on both sides: decoded pixels identical.
        assert np.array_equal(received.pixel_array, original.pixel_array)
    received = dcmread(got[dcmread(native).SOPInstanceUID])
    assert "LossyImageCompression" not in received
    assert received.PixelData == dcmread(native).PixelData


@pytest.mark.dcmtk
def test_storescp_xa_gets_jpeg_unchanged(tmp_path: Path, storescp_any: Storescp) -> None:
    src = jpeg_object(tmp_path / "a.dcm")
    dest = _dest(storescp_any.port, aet=storescp_any.aet)
    assert _send_all(dest, [src]) == {dcmread(src).SOPInstanceUID: "delivered"}
    [path] = storescp_any.by_uid().values()
    received = dcmread(path)
    assert received.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert received.PixelData == dcmread(src).PixelData
    assert "LossyImageCompression" not in received


@pytest.mark.dcmtk
def test_destination_preference_forces_uncompressed(tmp_path: Path, storescp_any: Storescp) -> None:
    src = jpeg_object(tmp_path / "a.dcm")
    dest = dataclasses.replace(
        _dest(storescp_any.port, aet=storescp_any.aet), transfer_syntaxes=[ExplicitVRLittleEndian]
    )
    _send_all(dest, [src])
    [path] = storescp_any.by_uid().values()
    assert dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_big_endian_file_is_converted_for_a_little_endian_peer(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from tests.send.data import testdata_copy

    src = testdata_copy("MR_small_bigendian.dcm", tmp_path / "mr_be.dcm")
    with scripted_scp(sop_classes=(MRImageStorage,)) as scp:
        assert set(_send_all(_dest(scp.port), [src]).values()) == {"delivered"}
    [got] = scp.datasets
    assert got.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    original = dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    assert np.array_equal(got.pixel_array, original.pixel_array)
    assert got.PatientName == original.PatientName and got.Rows == original.Rows


@pytest.mark.dcmtk
def test_many_small_pdus_arrive_byte_identical(tmp_path: Path) -> None:
    from tests.peers import run_storescp

    files = [native_sc(tmp_path / f"{i}.dcm", size=96, bits=16) for i in range(30)]
    files.append(jpeg_object(tmp_path / "j.dcm", width=256, height=192))
    with run_storescp(tmp_path / "scp", extra=["+xa", "-pdu", "4096"]) as scp:
        results = _send_all(_dest(scp.port, aet=scp.aet), files)
        assert set(results.values()) == {"delivered"}
        got = scp.by_uid()
    assert len(got) == len(files)
    for f in files:
        original = dcmread(f)
        received = dcmread(got[original.SOPInstanceUID])
        assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert received.PixelData == original.PixelData  # 18 KB over 4 KB PDUs
        assert received.PatientName == original.PatientName


@pytest.mark.dcmtk
def test_next_file_is_read_while_the_peer_stores(
    tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wire engine: while the peer stores one object, the next file's data set is read, so
    it goes out from memory; a file needing transcoding is not read ahead; every object
    arrives byte-identical."""
    from tests.peers import run_storescp

    if engine != "wire":
        pytest.skip("reading ahead is the wire engine's")
    from node.send import wire

    files = [native_sc(tmp_path / f"{i}.dcm", size=64, bits=16) for i in range(3)]
    files.append(jpeg_object(tmp_path / "j.dcm", width=64, height=48))
    files.append(native_sc(tmp_path / "last.dcm", size=32))
    sent_from: list[str] = []
    store = wire.Wire.store

    def spy(self: wire.Wire, context_id: int, **kw: object) -> object:
        sent_from.append("memory" if kw.get("data") is not None else "file")
        return store(self, context_id, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(wire.Wire, "store", spy)
    # The peer takes JPEG only decompressed: the JPEG file is transcoded (from memory too,
    # as an encoded data set) and the file after it is read ahead as usual.
    with run_storescp(tmp_path / "scp", extra=["-pdu", "16384"]) as scp:
        results = _send_all(_dest(scp.port, aet=scp.aet), files)
        got = scp.by_uid()
    assert set(results.values()) == {"delivered"}
    assert sent_from == ["file", "memory", "memory", "memory", "memory"]
    for f in files:
        original = dcmread(f)
        received = dcmread(got[original.SOPInstanceUID])
        if original.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian:
            assert received.PixelData == original.PixelData


@pytest.mark.dcmtk
def test_file_gone_before_its_turn_is_reported_on_its_turn(
    tmp_path: Path, storescp_any: Storescp, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wire engine: a planned file deleted before it could be read ahead is reported as
    gone on its turn, and the files after it are delivered."""
    if engine != "wire":
        pytest.skip("reading ahead is the wire engine's")
    from node.send import wire

    files = [native_sc(tmp_path / f"{i}.dcm", size=32) for i in range(3)]
    uids = [str(dcmread(f).SOPInstanceUID) for f in files]
    store = wire.Wire.store

    def delete_second(self: wire.Wire, context_id: int, **kw: object) -> object:
        files[1].unlink(missing_ok=True)
        return store(self, context_id, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(wire.Wire, "store", delete_second)
    results = _send_all(_dest(storescp_any.port, aet=storescp_any.aet), files)
    assert results[uids[0]] == results[uids[2]] == "delivered"
    assert results[uids[1]].startswith("dead: ") and "file is gone" in results[uids[1]]
    assert sorted(storescp_any.by_uid()) == sorted([uids[0], uids[2]])


# ----------------------------------------------------------------------------- files rewritten


def _rewrite_after_queueing(tmp_path: Path, compressed_first: bool) -> tuple[Path, str]:
    """A job queued for a file that is then rewritten in place, same object, other syntax
    (as dcmdjpeg/dcmcjpeg or a PACS export tool would)."""
    path = tmp_path / "obj.dcm"
    uid = "1.2.826.0.1.3680043.10.1234.77"
    (jpeg_object if compressed_first else native_sc)(path, uid=uid)
    return path, uid


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    "compressed_first", [True, False], ids=["jpeg-then-native", "native-then-jpeg"]
)
def test_file_rewritten_in_another_syntax_after_queueing_is_sent_as_it_is_now(
    tmp_path: Path, compressed_first: bool
) -> None:
    """The presentation context follows the file on disk, not the header read at enqueue:
    JPEG bytes labelled Explicit VR Little Endian (or the reverse) made storescp fail the
    store (0xA700) or abort, and the job was retried for queue.max_age_seconds."""
    from tests.peers import run_storescp

    path, uid = _rewrite_after_queueing(tmp_path, compressed_first)
    extra = ["+xa"] if compressed_first else []
    with run_storescp(tmp_path / "scp", extra=extra) as scp:
        worker, store = _worker(tmp_path, _dest(scp.port, aet=scp.aet))
        [jid] = enqueue_delivery(store, path, ["pacs"])
        (native_sc if compressed_first else jpeg_object)(path, uid=uid)  # rewritten in place
        assert worker.run_once() == 1
        got = scp.by_uid()
    job = store.get(jid)
    assert job is not None and job.state == JobState.DONE, job.last_error
    received = dcmread(got[uid])
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    now = dcmread(path)
    assert np.array_equal(received.pixel_array, now.pixel_array)


def test_file_rewritten_between_planning_and_sending_is_retried_not_sent(tmp_path: Path) -> None:
    """Rewritten after the association was planned: that file is not sent (it would carry the
    wrong syntax), it is retried; the association carries on with the next file."""
    from node.send.contexts import SendItem
    from node.send.worker import read_header

    changed = jpeg_object(tmp_path / "changed.dcm")
    other = native_sc(tmp_path / "other.dcm")
    planned = SendItem(
        path=changed, key=0, **{**read_header(changed), "transfer_syntax": ExplicitVRLittleEndian}
    )
    items = [planned, SendItem(path=other, key=1, **read_header(other))]
    outcomes = []
    with scripted_scp() as scp:
        StoreSCU(_dest(scp.port), calling_ae="ME").send(
            items, lambda i, o: outcomes.append((i.key, o))
        )
    assert [(k, o.verdict) for k, o in outcomes] == [(0, "retry"), (1, "delivered")]
    assert "(0002,0010) TransferSyntaxUID is now 1.2.840.10008.1.2.4.50" in outcomes[0][1].reason
    assert scp.received == [dcmread(other).SOPInstanceUID]


def test_file_that_now_holds_another_instance_is_dead(tmp_path: Path) -> None:
    path = native_sc(tmp_path / "a.dcm", uid="1.2.826.0.1.3680043.10.1234.81")
    with scripted_scp() as scp:
        worker, store = _worker(tmp_path, _dest(scp.port))
        [jid] = enqueue_delivery(store, path, ["pacs"])
        native_sc(path, uid="1.2.826.0.1.3680043.10.1234.82")
        assert worker.run_once() == 1
    job = store.get(jid)
    assert job is not None and job.state == JobState.DEAD
    assert "(0002,0003) MediaStorageSOPInstanceUID is now 1.2.826.0.1.3680043.10.1234.82" in (
        job.last_error or ""
    )
    assert scp.received == []
