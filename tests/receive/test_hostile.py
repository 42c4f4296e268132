"""Hostile and broken peers: path traversal, garbage, huge PDUs, full disk."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import subprocess
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

from node.receive.archive import INCOMING
from tests.peers import LOOPBACK, peer_env, run_storescp, tool
from tests.receive.helpers import (
    AET,
    archive_target,
    archived,
    dcmsend,
    echoscu,
    image_dataset,
    quiet_build,
    renamed_copy,
    running_scp,
)

pytestmark = pytest.mark.dcmtk


def _send(port: int, ds: object) -> int:
    """C-STORE one dataset with pynetdicom; the returned status (-1: no response)."""
    return _answer(port, ds)[0]


def _answer(port: int, ds: object) -> tuple[int, str]:
    """C-STORE one dataset with pynetdicom: (status, Error Comment); (-1, "") if none."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(SecondaryCaptureImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate(LOOPBACK, port, ae_title=AET)
    assert assoc.is_established
    try:
        rsp = quiet_build(assoc.send_c_store, ds)
        if "Status" not in rsp:
            return -1, ""
        return int(rsp.Status), str(rsp.get("ErrorComment", "") or "")
    finally:
        assoc.release()


def _everything_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


REFUSED_ELEMENT = {
    "study": "(0020,000D) StudyInstanceUID",
    "series": "(0020,000E) SeriesInstanceUID",
    "sop": "(0000,1000) AffectedSOPInstanceUID",
}


@pytest.mark.parametrize(
    "field, value",
    [
        ("study", "../../x"),
        ("series", "1.2/../../etc"),
        ("sop", "1.2/../../../passwd"),
        ("study", ".."),
        ("series", "1.2.840..1"),
        ("study", "1" * 65),
    ],
)
def test_traversal_uid_gets_failure_and_writes_nothing(
    tmp_path: Path, field: str, value: str
) -> None:
    ds = quiet_build(image_dataset, 2, 2, b"\x00" * 4, **{field: value})
    with running_scp(tmp_path / "node") as (scp, store, cfg):
        before = _everything_under(tmp_path)
        status, comment = _answer(scp.port, ds)
        assert status == 0xC000
        # The Error Comment names the element (the command's UID is checked first).
        assert comment.startswith(REFUSED_ELEMENT[field]) and "valid UID" in comment, comment
        assert archived(scp.archive_root) == []
        # Nothing new anywhere under the test directory except the job store's files.
        new = {p for p in _everything_under(tmp_path) - before if "state" not in p.parts}
        assert new == set()
        assert store.select(kind="export_instance") == []
        assert echoscu(scp.port).returncode == 0


def _raw_store(port: int, aet: str, sop_class: str, sop_instance: str, data: bytes) -> Any:
    """C-STORE ``data`` (encoded data set bytes, as they are) under the given command UIDs;
    the response (None if none came)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(SecondaryCaptureImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate(LOOPBACK, port, ae_title=aet)
    assert assoc.is_established
    try:
        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance
        req.Priority = 2
        req.DataSet = BytesIO(data)
        cx = assoc.accepted_contexts[0]
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            assoc.dimse.send_msg(req, cx.context_id)
            _, rsp = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        return rsp
    finally:
        assoc.release()


def _identity_variants() -> dict[str, Any]:
    def drop(keyword: str) -> Any:
        return lambda ds: delattr(ds, keyword)

    def put(keyword: str, value: str) -> Any:
        return lambda ds: setattr(ds, keyword, value)

    return {
        "SOP Class UID absent": drop("SOPClassUID"),
        "SOP Class UID empty": put("SOPClassUID", ""),
        "SOP Class UID another": put("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
        "SOP Instance UID absent": drop("SOPInstanceUID"),
        "SOP Instance UID empty": put("SOPInstanceUID", ""),
        "SOP Instance UID another": put("SOPInstanceUID", "1.2.3.999"),
    }


@pytest.mark.parametrize("fast_path", [True, False])
def test_data_set_identity_answered_as_storescp_and_nothing_stored(
    tmp_path: Path, fast_path: bool
) -> None:
    """The data set's SOP Class/Instance UID against the command's: absent is 0xC000,
    present but different (empty included) is 0xA900, as DCMTK's storescp (and Orthanc)
    answer; a data set without SOP Class UID was stored and acknowledged."""
    with (
        running_scp(tmp_path / "node", fast_path=fast_path) as (scp, store, _),
        run_storescp(tmp_path / "storescp", aet="STORESCP") as dcmtk,
    ):
        for name, change in _identity_variants().items():
            ds = image_dataset(2, 2, b"\x00" * 4)
            sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
            quiet_build(change, ds)
            encoded = quiet_build(encode, ds, False, True)
            assert encoded is not None
            theirs = _raw_store(dcmtk.port, "STORESCP", sop_class, sop_instance, encoded)
            ours = _raw_store(scp.port, AET, sop_class, sop_instance, encoded)
            assert theirs is not None and ours is not None, name
            assert theirs.Status in (0xC000, 0xA900), name
            assert ours.Status == theirs.Status, (name, hex(ours.Status), hex(theirs.Status))
            assert "(0008,001" in str(ours.ErrorComment or ""), name
        assert archived(scp.archive_root) == []
        assert store.select(kind="export_instance") == []


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_garbage_and_huge_pdu_abort_but_scp_keeps_serving(tmp_path: Path) -> None:
    with running_scp(tmp_path) as (scp, _, _):
        # Plain garbage: unknown PDU type -> the association is dropped.
        with socket.create_connection((LOOPBACK, scp.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
            sock.settimeout(10)
            with pytest.raises((ConnectionResetError, TimeoutError)):
                while sock.recv(65536):
                    pass
                raise ConnectionResetError  # orderly close is fine too
        assert echoscu(scp.port).returncode == 0

        # An A-ASSOCIATE-RQ announcing 4 GB, followed by 64 MiB of data: without a guard
        # pynetdicom would buffer all of it. The SCP must drop the connection at the header.
        rss_before = _rss_kib()
        sent = 0
        with socket.create_connection((LOOPBACK, scp.port), timeout=10) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
            chunk = b"\x00" * (1 << 20)
            try:
                for _ in range(64):
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # reset by the SCP: what we want
        assert sent < 64 * (1 << 20), "the SCP kept reading a 4 GB PDU"
        time.sleep(0.2)
        assert _rss_kib() - rss_before < 16 * 1024
        assert echoscu(scp.port).returncode == 0


def test_disk_floor_answers_a700_and_writes_nothing(tmp_path: Path) -> None:
    ds = image_dataset(2, 2, b"\x00" * 4)
    src = tmp_path / "one.dcm"
    ds.save_as(src, enforce_file_format=True)
    with running_scp(tmp_path / "node", min_free_bytes=1 << 62) as (scp, store, _):
        assert _send(scp.port, ds) == 0xA700
        dcmsend(scp.port, [src])  # DCMTK's sender too: refused, nothing written
        assert archived(scp.archive_root) == []
        assert not list(scp.archive_root.rglob(".tmp-*"))
        assert store.select(kind="export_instance") == []


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("where", ["directory", "flush"])
@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (errno.ENOSPC, "out of resources: archive file system full"),
        # a read-only remount, a changed permission, a failing disk: 0x0110 and a
        # traceback per object before, which modalities take as a final failure
        (errno.EROFS, "out of resources: archive not writable"),
        (errno.EIO, "out of resources: archive not writable"),
    ],
)
def test_a_full_file_system_answers_a700_and_the_retry_is_stored(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fast_path: bool,
    where: str,
    err: int,
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ENOSPC (no space or no inodes) creating the study/series directory or flushing the
    object is out of resources (0xA700, the sender retries later), not a processing
    failure (0x0110 with a traceback, as it was)."""
    ds = image_dataset(2, 2, b"\x00" * 4)
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, store, _):
        root = scp.archive_root

        def no_space(*args: Any) -> None:
            raise OSError(err, os.strerror(err))

        if where == "directory":
            real_mkdir = Path.mkdir

            def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
                if root in self.parents and INCOMING not in self.parts:
                    no_space()
                real_mkdir(self, *args, **kwargs)

            monkeypatch.setattr(Path, "mkdir", mkdir)
        else:
            monkeypatch.setattr(os, "fdatasync", no_space)
            monkeypatch.setattr(os, "fsync", no_space)
        status, comment = _answer(scp.port, ds)
        monkeypatch.undo()
        assert status == 0xA700, hex(status)
        assert comment == expected
        assert not [r for r in caplog.records if r.exc_info]  # one line, no traceback
        assert archived(root) == []
        assert not [p for p in root.rglob("*") if p.is_file()]  # no staging file left
        assert store.select(kind="export_instance") == []
        # Space again: the sender's retry is stored.
        assert _send(scp.port, ds) == 0x0000
        assert len(archived(root)) == 1


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_peer_dripping_a_pdu_is_aborted_and_frees_its_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fast_path: bool
) -> None:
    """One byte every 0.1 s never trips the kernel's per-read timeout: a PDU deadline does."""
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    from node.send.wire import store_rq_command
    from tests.receive.test_dataphase import _dataset_bytes, _wire

    ds = image_dataset(8, 8, b"\x01" * 64)
    data = _dataset_bytes(ds)
    cfg = {"network_timeout": 1.0, "max_associations": 1, "fast_path": fast_path}
    with running_scp(tmp_path / "node", **cfg) as (scp, _, _):
        wire, ids = _wire(scp.port, SecondaryCaptureImageStorage, CTImageStorage)
        cx = ids[str(SecondaryCaptureImageStorage)]
        wire._send_pdv(cx, 0x03, store_rq_command(ds.SOPClassUID, ds.SOPInstanceUID, 1))
        pdu = struct.pack(">BBI", 0x04, 0, len(data) + 6)
        pdu += struct.pack(">IBB", len(data) + 2, cx, 0x02) + data
        started = time.monotonic()
        cut = False
        for i in range(len(pdu)):
            try:
                wire.sock.sendall(pdu[i : i + 1])
            except OSError:
                cut = True
                break
            time.sleep(0.1)
            if time.monotonic() - started > 8:
                break
        else:  # pragma: no cover - the whole PDU went through
            pass
        if not cut:  # an A-ABORT or the end of the connection may be waiting unread
            wire.sock.settimeout(0.5)
            try:
                first = wire.sock.recv(1)
                cut = first in (b"", b"\x07")
            except ConnectionError:
                cut = True
            except OSError:
                cut = False
        assert cut, "a peer sending one byte every 0.1 s kept its association for 8 s"
        wire._close(released=False)
        assert archived(scp.archive_root) == []
        # The slot is free again (max_associations = 1) and nothing is left staged.
        assert echoscu(scp.port).returncode == 0
        assert not list((scp.archive_root / ".incoming").iterdir())
    assert any("too slow" in r.getMessage() for r in caplog.records)


def _request_without_transfer_syntax() -> bytes:
    """An A-ASSOCIATE-RQ whose one presentation context names no transfer syntax."""
    return _odd_request(1, [])


def _odd_request(context_id: int, syntaxes: list[bytes]) -> bytes:
    """An A-ASSOCIATE-RQ with one CT presentation context of this ID and syntaxes."""

    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(value)) + value

    body = struct.pack(">HH", 1, 0) + AET.encode().ljust(16) + b"MODALITY".ljust(16)
    body += b"\0" * 32 + item(0x10, b"1.2.840.10008.3.1.1.1")
    context = item(0x30, b"1.2.840.10008.5.1.4.1.1.2") + b"".join(item(0x40, t) for t in syntaxes)
    body += item(0x20, bytes((context_id, 0, 0, 0)) + context)
    body += item(0x50, item(0x51, struct.pack(">I", 16384)))
    return struct.pack(">BBI", 1, 0, len(body)) + body


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_request_pynetdicom_chokes_on_is_aborted_not_left_hanging(
    tmp_path: Path, fast_path: bool
) -> None:
    """pynetdicom's negotiation raises IndexError on a context without transfer syntax: its
    thread died without a word, the peer waited, and the connection and its DUL thread
    stayed open for as long as the peer held it (outside every limit). Now: A-ABORT (source
    2, reason 6), the connection closed, nothing left running."""
    import threading

    with running_scp(tmp_path, fast_path=fast_path) as (scp, _, _):
        before = threading.active_count()
        held: list[socket.socket] = []
        try:
            for _ in range(3):
                s = socket.create_connection((LOOPBACK, scp.port), timeout=5)
                held.append(s)  # the peer keeps its end open
                s.sendall(_request_without_transfer_syntax())
                assert s.recv(10) == bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6))
                assert s.recv(10) == b""  # closed by the SCP
            deadline = time.monotonic() + 5
            while threading.active_count() > before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert threading.active_count() <= before
        finally:
            for s in held:  # else the unfixed SCP could not even stop
                s.close()
        assert echoscu(scp.port).returncode == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("fast_path", [True, False])
def test_an_even_presentation_context_id_is_aborted_at_once(
    tmp_path: Path, fast_path: bool
) -> None:
    """pynetdicom's state machine raises on an even context ID (PS3.8: odd 1-255) and its
    DUL thread dies: the peer heard nothing for acse_timeout (30 s), its slot held. Now
    A-ABORT (2, 6) at once, and the slot is free."""
    with running_scp(tmp_path, max_associations=1, fast_path=fast_path) as (scp, _, cfg):
        assert cfg.receive.acse_timeout >= 30
        started = time.monotonic()
        with socket.create_connection((LOOPBACK, scp.port), timeout=10) as s:
            s.sendall(_odd_request(2, [b"1.2.840.10008.1.2.1"]))
            assert s.recv(10) == bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6))
        assert time.monotonic() - started < 5
        assert scp._ae is not None
        deadline = time.monotonic() + 5
        while scp._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert echoscu(scp.port).returncode == 0


def test_a_data_set_that_cannot_be_spilled_aborts_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's path (fast_path = false, as for Storage Commitment associations): a data
    set spilled to disk with the archive below receive.min_free_bytes. The floor check
    raised in pynetdicom's DUL thread, which died with a traceback on stderr (outside the
    node's log) and dropped the connection without an A-ABORT. Now: one log line, A-ABORT
    (service provider), nothing stored, the SCP keeps serving."""
    import shutil

    from node.receive.guard import SpillBuffer
    from tests.receive.test_dataphase import _store, _wait_empty, _wire

    monkeypatch.setattr(SpillBuffer, "CHECK_EVERY", 64 * 1024)  # instead of every 64 MiB
    ds = image_dataset(1024, 1024, b"\x07" * (1024 * 1024))  # several PDUs
    floor = shutil.disk_usage(tmp_path).free + (1 << 40)  # always above the free space
    caplog.set_level(logging.WARNING, logger="node.receive.guard")
    with running_scp(tmp_path / "node", fast_path=False, chunk_threshold_bytes=16 * 1024) as (
        scp,
        store,
        _cfg,
    ):
        scp.archive.min_free_bytes = floor
        wire, ids = _wire(scp.port, SecondaryCaptureImageStorage)
        outcome = _store(wire, ids, ds)
        assert not outcome.delivered
        assert wire.closed and wire.sock.fileno() == -1  # our side closed on the A-ABORT
        reason = "A-ABORT from its DICOM service provider: reason not specified"
        assert f"aborted the association ({reason})" in outcome.reason, outcome
        lines = [
            r.getMessage() for r in caplog.records if "aborted while receiving" in r.getMessage()
        ]
        assert len(lines) == 1 and "receive.min_free_bytes" in lines[0], lines
        assert archived(scp.archive_root) == []
        assert store.select(kind="export_instance") == []
        _wait_empty(scp.archive_root / ".incoming")
        assert echoscu(scp.port).returncode == 0


def _request_with_titles(called: bytes, calling: bytes) -> bytes:
    """An A-ASSOCIATE-RQ (Verification) with these raw 16-byte AE title fields."""
    request = _odd_request(1, [b"1.2.840.10008.1.2"])
    return request[:10] + called.ljust(16) + calling.ljust(16) + request[42:]


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize(
    ("called", "calling", "reason", "shown"),
    [
        (b"DICOMNOD\xe9", b"MODALITY", 7, "0xE9"),  # Latin-1 e-acute in the called title
        (AET.encode(), b"MOD\xc3\xa9", 3, "0xA9 0xC3"),  # UTF-8 e-acute
        (AET.encode(), b"MOD\x1bX", 3, "0x1B"),  # a control character (ESC)
        (AET.encode(), b"MOD\\X", 3, "backslash"),
        (AET.encode(), b" " * 16, 3, "spaces only"),
        (AET.encode(), b"MOD\x00X", 3, "0x00"),  # a NUL inside the title, not padding
    ],
)
def test_an_ae_title_outside_the_repertoire_is_rejected_cleanly(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fast_path: bool,
    called: bytes,
    calling: bytes,
    reason: int,
    shown: str,
) -> None:
    """pynetdicom decodes the request's AE titles while parsing it: a byte outside the
    default repertoire logged a traceback (UnicodeDecodeError, then ValueError) and the
    requestor got an A-ABORT. Now A-ASSOCIATE-RJ (PS3.8 9.3.4: rejected-permanent, service
    user, reason 7 called / 3 calling AE title not recognized), one log line naming the
    peer, no traceback, the slot freed, and a storescu store goes through afterwards."""
    caplog.set_level(logging.DEBUG)
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, _store, cfg):
        with socket.create_connection((LOOPBACK, scp.port), timeout=10) as s:
            s.sendall(_request_with_titles(called, calling))
            assert s.recv(10) == bytes((0x03, 0, 0, 0, 0, 4, 0, 1, 1, reason))
            assert s.recv(10) == b""  # closed by the SCP
        assert scp._ae is not None
        deadline = time.monotonic() + 5
        while scp._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not scp._ae.active_associations
        lines = [r for r in caplog.records if r.name == "node.receive.aetitles"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        message = lines[0].getMessage()
        which = "called" if reason == 7 else "calling"
        assert f"from {LOOPBACK}:" in message and f"{which} AE title" in message, message
        assert shown in message, message
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        src = renamed_copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
        result = subprocess.run(
            [tool("storescu"), "-aet", "MODALITY", "-aec", AET, LOOPBACK, str(scp.port)]
            + [str(src)],
            env=peer_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert archive_target(cfg.receive.archive, src)[1].is_file()


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize(
    ("called", "calling"),
    [
        (AET.encode().ljust(16, b"\x00"), b"MODALITY"),
        (AET.encode(), b"MODALITY".ljust(16, b"\x00")),
        (AET.encode() + b"\x00", b"MODALITY\x00   \x00"),  # NULs and spaces after it
    ],
)
def test_an_ae_title_padded_with_nul_bytes_is_accepted_as_dcmtk_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fast_path: bool, called: bytes, calling: bytes
) -> None:
    """C code copying a string into the 16-byte field pads it with NULs. DCMTK (storescp,
    Orthanc) reads the field as a C string and accepts it; we refused it A-ASSOCIATE-RJ,
    so such a modality could store anywhere but here."""
    caplog.set_level(logging.DEBUG)
    with running_scp(tmp_path / "node", fast_path=fast_path) as (scp, _store, _cfg):
        with socket.create_connection((LOOPBACK, scp.port), timeout=10) as s:
            s.sendall(_request_with_titles(called, calling))
            assert s.recv(1) == b"\x02"  # A-ASSOCIATE-AC
            head = s.recv(5)
            length = struct.unpack(">L", head[1:5])[0]
            body = b""
            while len(body) < length:
                body += s.recv(length - len(body))
            # the AC echoes the titles, as the SCP read them (PS3.8 9.3.3: not tested)
            assert body[4:20].rstrip(b" ") == AET.encode()
            assert body[20:36].rstrip(b" ") == b"MODALITY"
            s.sendall(bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0)))  # A-RELEASE-RQ
            reply = b""
            while len(reply) < 10:  # all of it: closing with bytes unread sends a RST
                chunk = s.recv(10 - len(reply))
                assert chunk, reply
                reply += chunk
            assert reply[:1] == b"\x06"  # A-RELEASE-RP
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
