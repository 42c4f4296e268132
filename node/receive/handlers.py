"""Event handlers of the SCP: C-ECHO, C-STORE, connection open/close.

The C-STORE handler is short on purpose: read the identifying elements without decoding
the object (:mod:`node.receive.header`), write the encoded data set behind our File Meta
Information atomically (:mod:`node.receive.archive`), record the instance and enqueue its
jobs in one commit (:mod:`node.receive.ledger`), then answer. It never raises into the
association: every failure is logged with the SOP Instance UID and answered with a named
status. Dependencies are bound when the handlers are registered (``(evt, fn, [ctx])``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from node.errors import UnsafePath
from node.logs import fields
from node.receive.aetitles import screen_ae_titles
from node.receive.archive import Archive, OutOfSpace, Staged, file_meta_bytes
from node.receive.guard import (
    SentCounter,
    SpillBuffer,
    SpillTracker,
    contain_failures,
    free_slot_when_closed,
    guard_recv,
    install_spill,
    install_wakeup,
)
from node.receive.header import (
    Header,
    HeaderError,
    read_header,
    read_header_file,
    truncation,
    truncation_file,
)
from node.receive.ledger import Instance, Ledger
from node.receive.sopclasses import STORAGE_CLASS_UIDS

log = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """The C-STORE statuses this SCP answers (PS3.4 Table B.2-1, PS3.7 C.4)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class UidLocks:
    """One lock per SOP Instance UID being stored, alive while someone holds or waits on it.

    Two associations storing the same instance at the same moment (a modality retrying on
    a second association, two routers forwarding one study) would both find it unrecorded,
    or both recorded under its old study, and leave two files or replace each other's
    copy behind the ledger's back. Stores of different instances never wait on each other.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, uid: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(uid, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[uid] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[uid]
                if users == 1:
                    del self._locks[uid]
                else:
                    self._locks[uid] = (lock, users - 1)


@dataclass(frozen=True)
class StoreContext:
    """What the C-STORE handler needs, bound at registration."""

    archive: Archive
    ledger: Ledger
    chunk_threshold: int
    pdu_cap: int
    #: The storage SOP classes accepted (standard and ``receive.extra_sop_classes``).
    storage_classes: frozenset[str] = frozenset(STORAGE_CLASS_UIDS)
    uid_locks: UidLocks = field(default_factory=UidLocks, compare=False)


def _failure(status: StoreStatus, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    # (0000,0902) Error Comment is LO: at most 64 characters.
    ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: Any) -> int:
    """C-ECHO: always success."""
    return 0x0000


def handle_conn_open(event: Any, ctx: StoreContext) -> None:
    """Install the per-connection guards (PDU cap, AE titles, spill to disk, event-driven
    DUL)."""
    assoc = event.assoc
    peer = f"{event.address[0]}:{event.address[1]}"
    guard_recv(assoc.dul.socket, ctx.pdu_cap, peer)
    screen_ae_titles(assoc, peer)
    free_slot_when_closed(assoc)
    tracker = SpillTracker()
    assoc._dicom_node_spills = tracker
    archive = ctx.archive
    install_spill(
        assoc,
        ctx.chunk_threshold,
        lambda: archive.new_incoming_file("spill"),
        tracker,
        archive.check_space,
    )
    assoc._dicom_node_sent = SentCounter()
    close_wakeup = install_wakeup(assoc, assoc._dicom_node_sent)
    assoc._dicom_node_close_wakeup = close_wakeup

    def cleanup() -> None:
        tracker.discard_all()
        close_wakeup()

    contain_failures(assoc, peer, cleanup)


def handle_conn_close(event: Any) -> None:
    """Remove spill files of objects whose transfer never completed; close the wake-up."""
    tracker = getattr(event.assoc, "_dicom_node_spills", None)
    if isinstance(tracker, SpillTracker):
        tracker.discard_all()
    close_wakeup = getattr(event.assoc, "_dicom_node_close_wakeup", None)
    if callable(close_wakeup):
        close_wakeup()


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY: without it a DCMTK sender stalls ~45 ms per C-STORE (Nagle)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # pragma: no cover - not a TCP socket
        log.debug("cannot set TCP_NODELAY: %s", exc)


def handle_store(event: Any, ctx: StoreContext) -> int | Dataset:
    """C-STORE (pynetdicom's path): store the object as received, durably, then answer."""
    request = event.request
    command_sop = str(request.AffectedSOPInstanceUID or "").strip("\x00 ")
    command_class = str(request.AffectedSOPClassUID or "").strip("\x00 ")
    buf = request.DataSet
    ts = event.context.transfer_syntax
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    if command_class not in ctx.storage_classes:
        # pynetdicom routes a C-STORE by its (0000,0002), not by its context: an extra
        # class registered for another SCP of this process must not be stored here.
        if isinstance(buf, SpillBuffer):
            buf.discard()
        log.error(
            "C-STORE from %s refused: (0000,0002) AffectedSOPClassUID %s is not a storage "
            "SOP class this SCP accepts (add it to receive.extra_sop_classes to store it)",
            calling_ae,
            command_class,
            extra=fields(sop_instance_uid=command_sop, calling_ae=calling_ae),
        )
        return _failure(
            StoreStatus.SOP_CLASS_NOT_SUPPORTED,
            "(0000,0002) AffectedSOPClassUID: SOP class not supported",
        )
    source: memoryview | Path | None = None
    try:
        if isinstance(buf, SpillBuffer) and buf.spilled:
            source = buf.finish()
        else:
            assert isinstance(buf, BytesIO)
            source = buf.getbuffer()
        status, comment = store_object(
            ctx,
            source,
            transfer_syntax=str(ts),
            implicit=ts.is_implicit_VR,
            little=ts.is_little_endian,
            calling_ae=calling_ae,
            command_sop=command_sop,
            command_class=command_class,
        )
    finally:
        if isinstance(source, memoryview):
            source.release()
        if isinstance(buf, SpillBuffer):
            buf.discard()
    return int(status) if status == StoreStatus.SUCCESS else _failure(status, comment)


def store_object(
    ctx: StoreContext,
    source: memoryview | Path | Staged,
    *,
    transfer_syntax: str,
    implicit: bool,
    little: bool,
    calling_ae: str,
    command_sop: str,
    command_class: str,
    header: Header | None = None,
) -> tuple[StoreStatus, str]:
    """Check, store durably and record one received object; ``(status, error comment)``.

    ``source`` is the data set in memory, in a spill file (data set only), or a
    :class:`Staged` file (file meta + data set, written by :mod:`node.receive.dataphase`).
    ``header``: already read from the data set's first bytes (else read here).
    Never raises: an unexpected error is logged and answered 0x0110.
    """
    try:
        return _store(
            ctx,
            source,
            transfer_syntax,
            implicit,
            little,
            calling_ae,
            command_sop,
            command_class,
            header,
        )
    except Exception as exc:  # never raise into the association
        log.exception(
            "C-STORE failed unexpectedly: %s", exc, extra=fields(sop_instance_uid=command_sop)
        )
        return StoreStatus.PROCESSING_FAILURE, f"processing failure: {exc}"


def _store(
    ctx: StoreContext,
    source: memoryview | Path | Staged,
    ts: str,
    implicit: bool,
    little: bool,
    calling_ae: str,
    command_sop: str,
    command_class: str,
    known_header: Header | None = None,
) -> tuple[StoreStatus, str]:
    log_fields = fields(sop_instance_uid=command_sop, calling_ae=calling_ae)
    try:
        if known_header is not None:
            header = known_header
        elif isinstance(source, Staged):
            header = read_header_file(source.path, implicit, little, source.data_offset)
        elif isinstance(source, Path):
            header = read_header_file(source, implicit, little)
        else:
            header = read_header(source, implicit, little)
    except HeaderError as exc:
        log.error("C-STORE refused: %s", exc, extra=log_fields)
        return StoreStatus.CANNOT_UNDERSTAND, "cannot parse the data set"

    problem = _check_identity(header, command_sop, command_class)
    if problem is not None:
        status, message = problem
        log.error("C-STORE refused: %s", message, extra=log_fields)
        return status, message

    try:
        path = ctx.archive.path_for(header.study_uid, header.series_uid, header.sop_instance_uid)
    except UnsafePath as exc:
        log.error("C-STORE refused: %s", exc, extra=log_fields)
        # The comment names the element ("(0020,000D) StudyInstanceUID ..."), in 64 chars.
        element = " ".join(str(exc).split()[:2])
        return StoreStatus.CANNOT_UNDERSTAND, f"{element} is not a valid UID"

    size = _size(source)
    if size % 2:
        # Every element has even length (PS3.5 7.1.1), and Deflated is not accepted here:
        # an odd data set is damaged. DCMTK's storescp aborts on it, and a DCMTK-based PACS
        # would refuse it (an odd last PDV) each time we forwarded it.
        log.error(
            "C-STORE refused: the data set has an odd length (%d bytes): every DICOM element "
            "has even length, so the object is damaged; fix the sending system",
            size,
            extra=log_fields,
        )
        return StoreStatus.CANNOT_UNDERSTAND, f"data set of odd length ({size} bytes)"
    cut = _truncation(source, header, implicit, little, size)
    if cut is not None:
        log.error("C-STORE refused: %s: the object is incomplete", cut, extra=log_fields)
        return StoreStatus.CANNOT_UNDERSTAND, "data set truncated: ends inside an element"

    with ctx.uid_locks.hold(header.sop_instance_uid):
        return _place_and_record(ctx, source, header, path, ts, calling_ae, log_fields)


def _place_and_record(
    ctx: StoreContext,
    source: memoryview | Path | Staged,
    header: Header,
    path: Path,
    ts: str,
    calling_ae: str,
    log_fields: dict[str, Any],
) -> tuple[StoreStatus, str]:
    """Archive and record a checked object (holding its SOP Instance UID's lock)."""
    previous = ctx.ledger.lookup(header.sop_instance_uid)
    recorded = previous is not None
    # The same SOP Instance UID recorded under another study or series (a corrected
    # Study/Series Instance UID): one instance must not end up as two files.
    moved_from = previous[1] if previous is not None and previous[1] != path else None
    if moved_from is not None and not moved_from.exists():
        moved_from = None
    if moved_from is not None and ctx.archive.duplicates == "keep":
        log.warning(
            "duplicate SOP Instance UID under another study/series: kept the first copy %s",
            moved_from,
            extra=log_fields,
        )
        return StoreStatus.SUCCESS, ""
    try:
        if isinstance(source, Staged):
            stored = ctx.archive.place(path, source, recorded=recorded)
        else:
            meta = file_meta_bytes(header.sop_class_uid, header.sop_instance_uid, ts, calling_ae)
            stored = ctx.archive.store(path, meta, source, recorded=recorded)
    except OutOfSpace as exc:
        log.error("C-STORE refused: %s", exc, extra=log_fields)
        if exc.full:
            return StoreStatus.OUT_OF_RESOURCES, "out of resources: archive file system full"
        if exc.unwritable:
            return StoreStatus.OUT_OF_RESOURCES, "out of resources: archive not writable"
        return StoreStatus.OUT_OF_RESOURCES, "out of resources: disk floor reached"

    if not stored.written:
        log.info("duplicate SOP Instance UID: kept the first copy", extra=log_fields)
        return StoreStatus.SUCCESS, ""
    if stored.existed and recorded:
        log.info("duplicate SOP Instance UID: overwritten", extra=log_fields)

    instance = Instance(
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        path=stored.path,
        size=stored.size,
        modality=header.modality,
        calling_ae=calling_ae,
        transfer_syntax=ts,
        flags=list(header.flags),
    )
    try:
        ctx.ledger.record(instance)
    except Exception as exc:
        # Not recorded means not safely stored: take the file back so the sender's retry
        # is stored and exported, rather than kept as an unrecorded duplicate.
        if not (stored.existed and recorded):
            ctx.archive.remove(stored.path)
        log.error("C-STORE failed: cannot record the instance: %s", exc, extra=log_fields)
        return StoreStatus.OUT_OF_RESOURCES, "cannot record the instance"
    if moved_from is not None:
        ctx.archive.remove(moved_from)
        log.warning(
            "duplicate SOP Instance UID under another study/series: overwritten, %s removed",
            moved_from,
            extra=log_fields,
        )
    if header.flags:
        log.warning(
            "stored with flags %s: Pixel Data length does not match Rows x Columns x ...",
            ",".join(header.flags),
            extra=log_fields,
        )
    log.debug("stored %s", stored.path, extra=log_fields)
    return StoreStatus.SUCCESS, ""


def _size(source: memoryview | Path | Staged) -> int:
    """Length of the received data set (without our File Meta Information)."""
    if isinstance(source, Staged):
        return os.stat(source.path).st_size - source.data_offset
    if isinstance(source, Path):
        return os.stat(source).st_size
    return len(source)


def _truncation(
    source: memoryview | Path | Staged, header: Header, implicit: bool, little: bool, size: int
) -> str | None:
    """Why the received data set is cut short, or None (see :func:`header.truncation`).

    Native Pixel Data ending exactly at the end of the data set (the usual image) is
    settled from the header alone; anything else is walked element by element, from Pixel
    Data on when the header's walk reached it (an encapsulated image: its fragments). ``size`` is
    the data set's length (:func:`_size`, taken once per object).
    """
    if header.pixel_end is not None:
        if header.pixel_end == size:
            return None
        if header.pixel_end > size:
            return (
                f"the data set ends inside (7FE0,0010) PixelData "
                f"({header.pixel_end - size} bytes missing)"
            )
    start = header.pixel_pos or 0  # the elements before Pixel Data were walked already
    if isinstance(source, Staged):
        return truncation_file(source.path, implicit, little, source.data_offset, start)
    if isinstance(source, Path):
        return truncation_file(source, implicit, little, start=start)
    return truncation(source, implicit, little, start)


def _check_identity(
    header: Header, command_sop: str, command_class: str
) -> tuple[StoreStatus, str] | None:
    """The data set must identify itself, and agree with the C-STORE command.

    As DCMTK's storescp and Orthanc answer: a SOP Class or Instance UID absent from the
    data set is 0xC000 (cannot understand); one present that differs from the command's
    (an empty value included) is 0xA900 (data set does not match SOP class).
    """
    for keyword, tag in (("SOPClassUID", "(0008,0016)"), ("SOPInstanceUID", "(0008,0018)")):
        if keyword in header.absent:
            return StoreStatus.CANNOT_UNDERSTAND, f"{tag} {keyword} missing"
    if not header.sop_instance_uid and not command_sop:
        return StoreStatus.CANNOT_UNDERSTAND, "(0008,0018) SOPInstanceUID missing"
    if not header.sop_class_uid and not command_class:
        return StoreStatus.CANNOT_UNDERSTAND, "(0008,0016) SOPClassUID missing"
    if command_sop and header.sop_instance_uid != command_sop:
        return (
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "(0008,0018) SOPInstanceUID differs from the command's",
        )
    if command_class and header.sop_class_uid != command_class:
        return (
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "(0008,0016) SOPClassUID differs from the command's",
        )
    # Needed for the archive path (storescp names files by SOP Instance UID alone).
    if not header.study_uid:
        return StoreStatus.CANNOT_UNDERSTAND, "(0020,000D) StudyInstanceUID missing"
    if not header.series_uid:
        return StoreStatus.CANNOT_UNDERSTAND, "(0020,000E) SeriesInstanceUID missing"
    return None
