"""The SCP's own data phase (node.receive.dataphase) against DCMTK and raw PDUs."""

from __future__ import annotations

import contextlib
import logging
import struct
import subprocess
import time
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    SecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
    Verification,
)

from node.receive import guard
from node.receive.dataphase import eligible, parse_command, response_command
from node.receive.sopclasses import STORAGE_CLASS_UIDS
from node.send import acse
from node.send.wire import Wire, store_rq_command
from tests.peers import LOOPBACK, peer_env, tool
from tests.receive.helpers import (
    AET,
    archived,
    dataset_bytes,
    dcmsend,
    echoscu,
    image_dataset,
    running_scp,
    sample_files,
)

pytestmark = pytest.mark.dcmtk

PHASE_LOG = "node.receive.dataphase"


def _objects(out: Path, n: int, size: int = 96) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = bytes((i + k) % 251 for k in range(size * size))
        path = out / f"obj{i:03d}.dcm"
        image_dataset(size, size, pixels).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _storescu(port: int, files: list[Path], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [tool("storescu"), "-aet", "MODALITY", "-aec", AET, *extra, LOOPBACK, str(port)]
        + [str(f) for f in files],
        env=peer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _assert_identical(files: list[Path], root: Path) -> None:
    stored = {p.stem: p for p in archived(root)}
    assert len(stored) == len(files)
    for src in files:
        uid = str(dcmread(src, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(src), src.name
        meta = dcmread(stored[uid]).file_meta
        assert meta.MediaStorageSOPInstanceUID == uid
        assert meta.SourceApplicationEntityTitle == "MODALITY"


def _phase_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == PHASE_LOG]


@pytest.mark.parametrize("fast_path", [True, False])
def test_small_pdus_many_files_byte_identical(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fast_path: bool
) -> None:
    """storescu with a 4 KiB PDU: every object spans several PDUs; both paths agree."""
    caplog.set_level(logging.INFO, logger=PHASE_LOG)
    files = _objects(tmp_path / "in", 25)
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, store, _):
        proc = _storescu(scp.port, files, "-pdu", "4096")
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        _assert_identical(files, scp.archive_root)
        assert len(store.select(kind="export_instance")) == len(files)
        assert store.counters()["received"] == len(files)
        # No staged or spare staging file is left once the association has ended.
        _wait_empty(scp.archive_root / ".incoming")
    lines = _phase_lines(caplog)
    if fast_path:
        assert any("released (25 stored)" in line for line in lines), lines
    else:
        assert lines == []


@pytest.mark.parametrize("fast_path", [True, False])
def test_association_set_up_never_waits_for_the_dul_idle_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    """The DUL thread sleeps only when idle: with its idle wait at 10 minutes an echo,
    a store and a Storage Commitment association still complete within DCMTK's and
    pynetdicom's 10 s ACSE/DIMSE timeouts (it used to sit out the wait with the
    A-ASSOCIATE-RQ's event queued, 20 ms per association at the default).
    """
    monkeypatch.setattr(guard, "IDLE_WAIT", 600.0)
    files = _objects(tmp_path / "in", 2)
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, _, _):
        timeouts = ["-ta", "10", "-td", "10", "-to", "10"]
        res = echoscu(scp.port, extra=timeouts)
        assert res.returncode == 0, res.stdout + res.stderr
        proc = _storescu(scp.port, files, *timeouts)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        _assert_identical(files, scp.archive_root)
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(LOOPBACK, scp.port, ae_title=AET)
        assert assoc.is_established
        assoc.release()
        assert assoc.is_released


def test_every_sample_syntax_through_the_data_phase(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """dcmsend proposes each file's own syntax (big endian, implicit, compressed ...)."""
    caplog.set_level(logging.INFO, logger=PHASE_LOG)
    files = sample_files(tmp_path / "in")
    with running_scp(tmp_path / "node") as (scp, store, _):
        res = dcmsend(scp.port, files)
        assert res.returncode == 0, res.stderr
        stored = archived(scp.archive_root)
        assert len(stored) == len(files)
        by_uid = {p.stem: p for p in stored}
        for src in files:
            ds = dcmread(src, stop_before_pixels=True)
            target = by_uid[str(ds.SOPInstanceUID)]
            src_ts, src_data = dataset_bytes(src)
            dst_ts, dst_data = dataset_bytes(target)
            if dst_ts == src_ts:  # DCMTK converts what it cannot propose as is
                assert dst_data == src_data, src.name
            assert dcmread(target).SOPInstanceUID == ds.SOPInstanceUID
        rows = store.select(kind="export_instance")
        assert len(rows) == len(files)
    assert any(f"({len(files)} stored)" in line for line in _phase_lines(caplog))


def test_concurrent_associations(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=PHASE_LOG)
    groups = [_objects(tmp_path / f"in{g}", 8, size=64 + g) for g in range(4)]
    with running_scp(tmp_path / "node") as (scp, store, _):
        procs = [_storescu(scp.port, files, "-pdu", "16384") for files in groups]
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
        everything = [f for files in groups for f in files]
        _assert_identical(everything, scp.archive_root)
        assert len(store.select(kind="export_instance")) == len(everything)
        assert len(store.select(kind="study_complete")) == len(everything)
    assert sum("released (8 stored)" in line for line in _phase_lines(caplog)) == 4


# ---------------------------------------------------------------- raw PDUs


def _wire(port: int, *contexts: str) -> tuple[Wire, dict[str, int]]:
    """Our SCU's own association (node.send.acse) and data phase, driven by hand."""
    proposed = [(str(cx), "1.2.840.10008.1.2.1") for cx in contexts]
    sock = acse.connect(LOOPBACK, port, timeout=10)
    assoc = acse.negotiate(
        sock, called_ae=AET, calling_ae="MODALITY", contexts=proposed, max_pdu=16384, timeout=10
    )
    assert len(assoc.contexts) == len(proposed)
    ids = {sop_class: cx_id for (sop_class, _), cx_id in assoc.contexts.items()}
    wire = Wire(assoc.sock, assoc.peer_max_pdu, dimse_timeout=10, network_timeout=10)
    return wire, ids


def _store(
    wire: Wire, ids: dict[str, int], ds: Any, data: bytes | None = None, msg_id: int = 1
) -> Any:
    """C-STORE ``ds`` on its SOP class's context: its encoded data set, or ``data`` (the
    bytes as a sender puts them on the wire, e.g. damaged on purpose)."""
    return wire.store(
        ids[str(ds.SOPClassUID)],
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        msg_id=msg_id,
        data=_dataset_bytes(ds) if data is None else data,
    )


def _dataset_bytes(ds: Any) -> bytes:
    """The data set encoded Explicit VR Little Endian, as a sender puts it on the wire."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set's elements (group 0000, Implicit VR LE) without the group length."""
    return b"".join(struct.pack("<HHI", 0, el, len(v)) + v for el, v in elements)


def _store_command_with(ds: Any, changes: dict[int, bytes | None]) -> bytes:
    """Our C-STORE-RQ command set for ``ds`` with elements replaced (or removed: None),
    without the group length (the SCP must not need it)."""
    command = parse_command(store_rq_command(ds.SOPClassUID, ds.SOPInstanceUID, 1))
    for element, value in {**changes, 0x0000: None}.items():
        if value is None:
            del command[element]
        else:
            command[element] = value
    return _command_set(sorted(command.items()))


def _wait_empty(directory: Path) -> None:
    deadline = time.monotonic() + 10
    while list(directory.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not list(directory.iterdir())


@pytest.mark.parametrize("ending", ["abort", "release", "close"])
def test_ending_mid_object_stores_nothing(
    tmp_path: Path, ending: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PHASE_LOG)
    ds = image_dataset(200, 200, b"\x01" * 40000)
    data = _dataset_bytes(ds)
    with running_scp(tmp_path / "node") as (scp, store, _):
        wire, ids = _wire(scp.port, SecondaryCaptureImageStorage)
        cx = ids[str(SecondaryCaptureImageStorage)]
        wire._send_pdv(cx, 0x03, store_rq_command(ds.SOPClassUID, ds.SOPInstanceUID, 1))
        wire._send_pdv(cx, 0x00, data[:20000])  # half of the data set, not the last fragment
        if ending == "abort":
            wire.abort()
        elif ending == "release":
            wire.sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + b"\x00" * 4)
            kind, _ = wire._recv_pdu()
            assert kind == 0x06  # A-RELEASE-RP
            wire._close(released=True)
        else:
            wire._close(released=False)
        # The SCP may still be reading when the client is gone: wait until it has
        # given the partial object up, then nothing of it may remain.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            "partial object discarded" in line for line in _phase_lines(caplog)
        ):
            time.sleep(0.02)
        assert any("partial object discarded" in line for line in _phase_lines(caplog))
        _wait_empty(scp.archive_root / ".incoming")
        assert archived(scp.archive_root) == []
        assert store.select(kind="export_instance") == []
        assert echoscu(scp.port).returncode == 0


@pytest.mark.parametrize("problem", ["c-find", "unknown-context", "data-before-command"])
def test_protocol_errors_abort(tmp_path: Path, problem: str) -> None:
    with running_scp(tmp_path / "node") as (scp, _, _):
        wire, ids = _wire(scp.port, CTImageStorage)
        cx = ids[str(CTImageStorage)]
        if problem == "c-find":
            find = bytearray(store_rq_command(CTImageStorage, "1.2.3", 7))
            # Turn the CommandField (0000,0100) value from C-STORE-RQ into C-FIND-RQ.
            at = bytes(find).index(struct.pack("<HHI", 0, 0x0100, 2)) + 8
            find[at : at + 2] = struct.pack("<H", 0x0020)
            wire._send_pdv(cx, 0x03, bytes(find))
        elif problem == "unknown-context":
            wire._send_pdv(cx + 2, 0x03, store_rq_command(CTImageStorage, "1.2.3", 1))
        else:
            wire._send_pdv(cx, 0x02, b"\x08\x00\x16\x00")
        kind, body = wire._recv_pdu()
        assert kind == 0x07  # A-ABORT
        wire._close(released=False)
        assert echoscu(scp.port).returncode == 0


def test_echo_and_store_responses_on_the_wire(tmp_path: Path) -> None:
    ds = image_dataset(4, 4, b"\x02" * 16)
    with running_scp(tmp_path / "node") as (scp, store, _):
        wire, ids = _wire(scp.port, SecondaryCaptureImageStorage, Verification)
        # C-ECHO-RQ built by hand: CommandField 0x0030, no data set.
        body = _command_set(
            [
                (0x0002, b"1.2.840.10008.1.1\x00"),
                (0x0100, struct.pack("<H", 0x0030)),
                (0x0110, struct.pack("<H", 5)),
                (0x0800, struct.pack("<H", 0x0101)),
            ]
        )
        echo = struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body
        wire._send_pdv(ids[str(Verification)], 0x03, echo)
        rsp = wire._receive_response(ids[str(Verification)])
        assert struct.unpack("<H", rsp[0x0100])[0] == 0x8030
        assert struct.unpack("<H", rsp[0x0120])[0] == 5
        assert struct.unpack("<H", rsp[0x0900])[0] == 0
        outcome = _store(wire, ids, ds, msg_id=9)
        assert outcome.delivered and outcome.status == 0, outcome
        wire.release()
        (stored,) = archived(scp.archive_root)
        assert dataset_bytes(stored)[1] == _dataset_bytes(ds)
        assert len(store.select(kind="export_instance")) == 1


def test_stop_aborts_an_idle_data_phase(tmp_path: Path) -> None:
    with running_scp(tmp_path / "node") as (scp, _, _):
        wire, _ = _wire(scp.port, CTImageStorage)
        started = time.monotonic()
        scp.stop(grace=0.2)
        kind, _ = wire._recv_pdu()
        assert kind == 0x07
        assert time.monotonic() - started < 5
        wire._close(released=False)


# ---------------------------------------------------------------- units


def test_response_command_decodes_with_pydicom() -> None:
    raw = response_command(0x8001, 42, "1.2.840.10008.5.1.4.1.1.7", 0xC000, "1.2.3.4", "bad UID")
    ds = read_dataset(BytesIO(raw), True, True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 42
    assert ds.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.AffectedSOPInstanceUID == "1.2.3.4"
    assert ds.Status == 0xC000
    assert ds.ErrorComment == "bad UID"
    assert ds.CommandDataSetType == 0x0101
    assert parse_command(raw)[0x0120] == struct.pack("<H", 42)


def test_parse_command_rejects_malformed() -> None:
    from node.receive.dataphase import ProtocolError

    with pytest.raises(ProtocolError):
        parse_command(struct.pack("<HHI", 0, 0x0100, 200) + b"\x01\x00")
    with pytest.raises(ProtocolError):
        parse_command(struct.pack("<HHI", 8, 0x0018, 2) + b"\x01\x00")


def _cx(abstract: str, as_scp: bool | None = True) -> Any:
    return SimpleNamespace(abstract_syntax=abstract, as_scp=as_scp)


def test_eligibility() -> None:
    ct, sc = str(CTImageStorage), str(SecondaryCaptureImageStorage)
    private = "1.3.12.2.1107.5.9.1"
    classes = frozenset(STORAGE_CLASS_UIDS)

    def ok(*contexts: Any, storage: frozenset[str] = classes) -> bool:
        return eligible(SimpleNamespace(accepted_contexts=list(contexts)), storage)

    assert ok(_cx(ct), _cx(str(Verification)))
    assert ok(_cx(sc, None))
    assert not ok()
    assert not ok(_cx(ct), _cx(str(StorageCommitmentPushModel)))
    assert not ok(_cx(ct, False))
    assert not ok(_cx(private))  # a private class: storage only where configured
    assert ok(_cx(private), storage=classes | {private})


def test_header_from_the_first_bytes_only_when_they_settle_it() -> None:
    from node.receive.header import read_header, read_header_prefix

    ds = image_dataset(64, 64, b"\x03" * 4096)
    data = _dataset_bytes(ds)
    full = read_header(data, False, True)
    pixel_at = data.index(b"\xe0\x7f\x10\x00")
    # Up to and including the Pixel Data element header: settled, identical to the full read.
    head = read_header_prefix(data[: pixel_at + 12], False, True, complete=False)
    assert head == full
    assert read_header_prefix(data, False, True, complete=True) == full
    # Ending at an element boundary before Pixel Data: not settled (UIDs may follow).
    boundary = data.index(b"\x08\x00\x18\x00")  # (0008,0018) SOPInstanceUID starts here
    assert read_header_prefix(data[:boundary], False, True, complete=False) is None
    # Ending inside an element: not settled either.
    assert read_header_prefix(data[: boundary + 5], False, True, complete=False) is None


def test_hostile_pdus_in_the_data_phase(tmp_path: Path) -> None:
    with running_scp(tmp_path / "node") as (scp, _, _):
        # An unknown PDU type after the association is accepted: A-ABORT, reason 1.
        wire, _ = _wire(scp.port, CTImageStorage)
        wire.sock.sendall(struct.pack(">BBI", 0x4A, 0, 4) + b"\x00" * 4)
        kind, body = wire._recv_pdu()
        assert kind == 0x07 and body[2:4] == b"\x02\x01"  # service provider, unrecognized PDU
        wire._close(released=False)
        # A P-DATA-TF announcing 4 GB: dropped at the header, the body is never read.
        wire, _ = _wire(scp.port, CTImageStorage)
        wire.sock.sendall(struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0))
        sent = 0
        chunk = b"\x00" * (1 << 20)
        with contextlib.suppress(OSError):
            for _ in range(64):
                wire.sock.sendall(chunk)
                sent += len(chunk)
        assert sent < 64 * (1 << 20), "the SCP kept reading a 4 GB PDU"
        wire._close(released=False)
        _wait_empty(scp.archive_root / ".incoming")
        assert echoscu(scp.port).returncode == 0


def test_store_without_message_id_aborts_before_storing(tmp_path: Path) -> None:
    """Without (0000,0110) no response can be sent: abort at the command, store nothing."""
    ds = image_dataset(4, 4, b"\x02" * 16)
    body = _store_command_with(ds, {0x0110: None})  # no MessageID
    with running_scp(tmp_path / "node") as (scp, store, _):
        wire, ids = _wire(scp.port, SecondaryCaptureImageStorage)
        cx = ids[str(SecondaryCaptureImageStorage)]
        wire._send_pdv(cx, 0x03, body)
        with contextlib.suppress(OSError):
            wire._send_pdv(cx, 0x02, _dataset_bytes(ds))
        kind, _ = wire._recv_pdu()
        assert kind == 0x07  # A-ABORT
        wire._close(released=False)
        _wait_empty(scp.archive_root / ".incoming")
        assert archived(scp.archive_root) == []
        assert store.select(kind="export_instance") == []
        assert echoscu(scp.port).returncode == 0


@pytest.mark.parametrize("uid", [b"1.2.3\xe9\x00", b"1.2/../../x\x00", b"1.2.3\\4\x00", b"1.2.3\n"])
def test_command_uid_not_a_uid_is_refused_before_staging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, uid: bytes
) -> None:
    """A non-ASCII byte in (0000,1000) crashed the association's thread (no response)."""
    ds = image_dataset(4, 4, b"\x02" * 16)
    body = _store_command_with(ds, {0x1000: uid})
    with running_scp(tmp_path / "node") as (scp, store, _):
        wire, ids = _wire(scp.port, SecondaryCaptureImageStorage)
        cx = ids[str(SecondaryCaptureImageStorage)]
        wire._send_pdv(cx, 0x03, body)
        wire._send_pdv(cx, 0x02, _dataset_bytes(ds))
        rsp = wire._receive_response(cx)
        assert struct.unpack("<H", rsp[0x0900])[0] == 0xC000
        assert b"(0000,1000)" in rsp[0x0902]
        wire.release()
        assert archived(scp.archive_root) == []
        assert store.select(kind="export_instance") == []
        _wait_empty(scp.archive_root / ".incoming")
        assert echoscu(scp.port).returncode == 0
    assert any("AffectedSOPInstanceUID" in r.getMessage() for r in caplog.records)
