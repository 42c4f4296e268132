"""The SCP's data phase on the raw socket, after pynetdicom accepted the association.

pynetdicom does the association set-up: A-ASSOCIATE-RQ, TLS, the address / AE title / limit
checks, presentation-context negotiation, A-ASSOCIATE-AC. Its reactor then polls a queue
every millisecond and decodes every PDU and command set through pydicom, which is most of
the time per object when the store itself is fast. For an association whose accepted
contexts are all storage or Verification with us as SCP (decided up front, once the AC has
been sent), this module parks pynetdicom's DUL thread and runs the rest of the association
in the association's own thread with blocking I/O (PS3.8, PS3.7):

* P-DATA-TF: PDVs are reassembled per message; the command set (Implicit VR Little
  Endian, PS3.7 9.3.1.1) is parsed by hand; C-STORE data set fragments are written
  straight into a staged file in ``<archive>/.incoming`` behind its File Meta
  Information (:class:`~node.receive.archive.Staged`): no per-object decode, no copy in
  memory. The complete object then goes through the same checks, durable placement and
  ledger commit as pynetdicom's path (:func:`~node.receive.handlers.store_object`), and
  the C-STORE-RSP (PS3.7 9.3.1.2) is written only after that returns;
* C-ECHO-RQ is answered success; A-RELEASE-RQ with A-RELEASE-RP; A-ABORT closes;
* anything else (another DIMSE command, an unexpected or unknown PDU type, PDVs of a
  context we did not accept, a malformed command set) is answered with A-ABORT and the
  connection closed, as DCMTK's storescp does; a PDU announced longer than the PDU cap
  drops the connection before its body is read; a peer idle or stalled longer than
  ``receive.network_timeout`` is aborted.

Associations that accepted anything else (Storage Commitment, SCU/SCP role selection)
stay entirely on pynetdicom's path. ``receive.fast_path = false`` turns this module off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import UID
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.errors import UnsafePath
from node.logs import fields
from node.receive.archive import OutOfSpace, Staged, check_uid, file_meta_bytes
from node.receive.guard import PDU_MIN_RATE
from node.receive.handlers import StoreContext, StoreStatus, store_object
from node.receive.header import read_header_prefix
from node.sockopts import kernel_timeouts

log = logging.getLogger(__name__)

_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
_ELEM = struct.Struct("<HHI")

VERIFICATION = str(Verification)

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATA_SET = 0x0101
#: The longest command set accepted (a C-STORE-RQ is ~200 bytes).
MAX_COMMAND = 64 << 10
#: The data set's first bytes kept in memory: its header is read from them when they
#: reach Pixel Data (else from the staged file).
HEAD_BYTES = 64 << 10
#: Free-space checks while a big data set streams in, every this many bytes.
CHECK_EVERY = 64 << 20


class ProtocolError(Exception):
    """The peer broke PS3.7/PS3.8: the association is aborted."""


class _Closed(Exception):
    """The connection ended (closed by the peer, timed out, or aborted by us)."""

    def __init__(self, message: str, level: int = logging.INFO) -> None:
        super().__init__(message)
        self.level = level


@dataclass(frozen=True)
class DataPhaseSettings:
    """What the data phase needs beyond the C-STORE context."""

    pdu_cap: int
    network_timeout: float | None
    accept_timeout: float


# ------------------------------------------------------------------ command sets


def parse_command(data: bytes | bytearray) -> dict[int, bytes]:
    """Command-set elements (group 0000, Implicit VR LE) by element number -> raw value."""
    out: dict[int, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        if pos + 8 > end:
            raise ProtocolError(f"command set truncated at byte {pos}")
        group, elem, length = _ELEM.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or pos + length > end:
            raise ProtocolError(
                f"malformed command set: element ({group:04X},{elem:04X}) at byte {pos - 8}"
            )
        out[elem] = bytes(data[pos : pos + length])
        pos += length
    return out


def _us(raw: bytes | None) -> int | None:
    return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None


def _uid_text(raw: bytes | None) -> str:
    return raw.decode("ascii", "replace").strip("\x00 ") if raw else ""


def _uid_value(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def response_command(
    field: int, msg_id: int, sop_class: str, status: int, sop_instance: str = "", comment: str = ""
) -> bytes:
    """A DIMSE-C response command set (no data set), Implicit VR LE, group length first."""
    elems: list[tuple[int, bytes]] = []
    if sop_class:
        elems.append((0x0002, _uid_value(sop_class)))  # AffectedSOPClassUID
    elems += [
        (0x0100, struct.pack("<H", field)),  # CommandField
        (0x0120, struct.pack("<H", msg_id)),  # MessageIDBeingRespondedTo
        (0x0800, struct.pack("<H", NO_DATA_SET)),  # CommandDataSetType
        (0x0900, struct.pack("<H", status)),  # Status
    ]
    if comment:
        raw = comment[:64].encode("ascii", "replace")
        elems.append((0x0902, raw + b" " if len(raw) % 2 else raw))  # ErrorComment
    if sop_instance:
        elems.append((0x1000, _uid_value(sop_instance)))  # AffectedSOPInstanceUID
    elems.sort()
    body = b"".join(_ELEM.pack(0x0000, el, len(v)) + v for el, v in elems)
    return _ELEM.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body


# ------------------------------------------------------------------ eligibility


def eligible(assoc: Any, storage_classes: frozenset[str]) -> bool:
    """True if every accepted context is storage (one of ``storage_classes``) or
    Verification, with us as the SCP."""
    contexts = list(getattr(assoc, "accepted_contexts", []) or [])
    if not contexts:
        return False
    for cx in contexts:
        if str(cx.abstract_syntax) not in storage_classes and cx.abstract_syntax != VERIFICATION:
            return False
        if cx.as_scp is False:  # role selection made us the SCU of this context
            return False
    return True


# ------------------------------------------------------------------ one message


class _Message:
    """One DIMSE message being reassembled; a C-STORE data set goes to a staged file."""

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        self.command = bytearray()
        self.fields: dict[int, bytes] | None = None
        self.fd: int | None = None
        self.staged: Path | None = None
        self.data_offset = 0
        self.size = 0
        self.since_check = 0
        self.head = bytearray()  # the data set's first bytes, for its header
        self.refusal: tuple[StoreStatus, str] | None = None

    def discard(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if self.staged is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.staged)
            self.staged = None


# ------------------------------------------------------------------ the data phase


class DataPhase:
    """Runs one accepted association's data phase on its socket (see the module doc)."""

    def __init__(self, assoc: Any, ctx: StoreContext, settings: DataPhaseSettings) -> None:
        self.assoc = assoc
        self.ctx = ctx
        self.settings = settings
        self.sock: socket.socket = assoc.dul.socket.socket
        self.calling_ae = str(assoc.requestor.ae_title).strip()
        self.peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        contexts = {int(cx.context_id): cx for cx in assoc.accepted_contexts}
        self.contexts: dict[int, tuple[str, UID]] = {
            cid: (str(cx.abstract_syntax), UID(cx.transfer_syntax[0]))
            for cid, cx in contexts.items()
        }
        peer_max = int(assoc.requestor.maximum_length or 0)
        self.fragment = (peer_max - 6) if peer_max > 6 else 1 << 20
        self.buf = bytearray(min(settings.pdu_cap, 1 << 20))
        self.message: _Message | None = None
        self.closed = False
        self._send_lock = threading.Lock()
        self._flags = 0
        self._spare: tuple[int, Path] | None = None
        self.stored = 0

    # ---------------------------------------------------------------- I/O

    def _use_waitall(self) -> None:
        """Blocking socket, kernel timeouts, ``MSG_WAITALL``: one call per PDU part.

        A socket with a Python timeout is non-blocking underneath, so each ``recv``
        returns whatever segment has arrived (several calls per 128 KiB PDU). TLS sockets
        keep the Python timeout (``recv`` flags are not allowed there).
        """
        timeout = self.settings.network_timeout or None  # 0: no limit (never non-blocking)
        if isinstance(self.sock, ssl.SSLSocket):
            self.sock.settimeout(timeout)
            return
        if kernel_timeouts(self.sock, send=timeout, recv=timeout):
            self._flags = socket.MSG_WAITALL
        else:
            self.sock.settimeout(timeout)

    def _recv_into(self, view: memoryview, deadline: float | None = None) -> None:
        """Fill ``view``; a peer still short of it after ``deadline`` is aborted.

        The kernel timeout bounds each wait for the next bytes, not a whole PDU: without
        the deadline a peer dripping one byte a minute would hold its association slot
        (and a staging file) for ever.
        """
        got = 0
        n = len(view)
        while got < n:
            if got and deadline is not None and time.monotonic() > deadline:
                self._abort(0x02, 0x00)
                raise _Closed(
                    f"{self.peer} sent only {got} of the {n} bytes of a PDU in "
                    "receive.network_timeout + 1 s per 64 KiB: too slow, aborted",
                    logging.WARNING,
                )
            try:
                r = self.sock.recv_into(view[got:], n - got, self._flags)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: SO_RCVTIMEO expired
                self._abort(0x02, 0x00)
                raise _Closed(
                    f"no data from {self.peer} for receive.network_timeout seconds"
                ) from None
            except OSError as exc:
                raise _Closed(f"connection to {self.peer} failed: {exc}") from None
            if r == 0:
                raise _Closed(f"{self.peer} closed the connection")
            got += r

    def _deadline(self, length: int) -> float | None:
        """When the body of a PDU of ``length`` bytes, announced now, must have arrived:
        ``network_timeout`` plus one second per 64 KiB (PDU_MIN_RATE)."""
        timeout = self.settings.network_timeout
        return time.monotonic() + timeout + length / PDU_MIN_RATE if timeout else None

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            if self.closed:
                raise _Closed("connection already closed")
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise _Closed(f"cannot send to {self.peer}: {exc}") from None

    def _send_command(self, context_id: int, command: bytes) -> None:
        pdus = []
        view = memoryview(command)
        step = max(self.fragment, 16)
        for start in range(0, len(command), step):
            chunk = view[start : start + step]
            control = 0x03 if start + step >= len(command) else 0x01
            pdus.append(
                _PDU_HEADER.pack(0x04, 0, len(chunk) + 6)
                + _PDV_HEADER.pack(len(chunk) + 2, context_id, control)
                + bytes(chunk)
            )
        self._send(b"".join(pdus))

    def _abort(self, source: int, reason: int) -> None:
        """Send A-ABORT (PS3.8 9.3.8) and close; idempotent, callable from any thread."""
        with self._send_lock:
            if self.closed:
                return
            with contextlib.suppress(OSError):
                self.sock.settimeout(2.0)
                self.sock.sendall(_PDU_HEADER.pack(0x07, 0, 4) + bytes((0, 0, source, reason)))
            self._close_locked()

    def _close_locked(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def abort(self) -> None:
        """Abort from outside (the SCP is stopping): wakes the blocked receive."""
        self._abort(0x00, 0x00)

    # ---------------------------------------------------------------- the loop

    def run(self) -> str:
        """Serve until release, abort or error; returns how it ended."""
        self._use_waitall()
        header = bytearray(6)
        hview = memoryview(header)
        try:
            while True:
                self._recv_into(hview)
                kind, _, length = _PDU_HEADER.unpack(header)
                if kind not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
                    log.warning("unknown PDU type 0x%02X from %s: aborting", kind, self.peer)
                    self._abort(0x02, 0x01)  # service provider, unrecognized PDU
                    return "aborted"
                if length > self.settings.pdu_cap:
                    log.warning(
                        "peer %s announced a PDU of %d bytes, over the limit of %d: dropping it",
                        self.peer,
                        length,
                        self.settings.pdu_cap,
                    )
                    with self._send_lock:
                        self._close_locked()
                    return "dropped"
                if length > len(self.buf):
                    self.buf = bytearray(length)
                body = memoryview(self.buf)[:length]
                self._recv_into(body, self._deadline(length))
                if kind == 0x04:
                    self._p_data(body)
                elif kind == 0x05:  # A-RELEASE-RQ
                    if self.message is not None:
                        log.warning("%s released in the middle of a message", self.peer)
                    self._send(_PDU_HEADER.pack(0x06, 0, 4) + b"\x00" * 4)
                    with self._send_lock:
                        self._close_locked()
                    return "released"
                elif kind == 0x07:  # A-ABORT
                    log.info("association aborted by %s", self.peer)
                    with self._send_lock:
                        self._close_locked()
                    return "aborted by peer"
                else:
                    log.warning("unexpected PDU type 0x%02X from %s: aborting", kind, self.peer)
                    self._abort(0x02, 0x02)  # service provider, unexpected PDU
                    return "aborted"
        except ProtocolError as exc:
            log.warning("protocol error from %s: %s; aborting", self.peer, exc)
            self._abort(0x00, 0x00)
            return "aborted"
        except _Closed as exc:
            log.log(exc.level, "%s", exc)
            with self._send_lock:
                self._close_locked()
            return "closed"
        except Exception:  # a bug of ours: the peer gets an A-ABORT, the SCP goes on
            log.exception(
                "unexpected error in the data phase with %s (%s): aborting",
                self.calling_ae,
                self.peer,
            )
            self._abort(0x02, 0x00)
            return "aborted"
        finally:
            if self.message is not None:
                self._discard_partial()
            self._drop_spare()

    def _discard_partial(self) -> None:
        """The association ended inside a message: say whose object was lost, drop it."""
        msg, self.message = self.message, None
        assert msg is not None
        if msg.fields is not None and _us(msg.fields.get(0x0100)) == C_STORE_RQ:
            log.warning(
                "association with %s (%s) ended in the middle of a C-STORE data set "
                "(%d bytes received): partial object discarded, nothing stored",
                self.calling_ae,
                self.peer,
                msg.size,
                extra=fields(
                    sop_instance_uid=_uid_text(msg.fields.get(0x1000)),
                    calling_ae=self.calling_ae,
                ),
            )
        msg.discard()

    # ---------------------------------------------------------------- P-DATA

    def _p_data(self, body: memoryview) -> None:
        pos = 0
        end = len(body)
        if end < 6:
            raise ProtocolError("P-DATA-TF without a presentation data value")
        while pos < end:
            if pos + 6 > end:
                raise ProtocolError("truncated PDV item header")
            length, context_id, control = _PDV_HEADER.unpack_from(body, pos)
            if length < 2 or pos + 4 + length > end:
                raise ProtocolError(f"PDV item length {length} does not fit its PDU")
            if context_id not in self.contexts:
                raise ProtocolError(f"PDV for presentation context {context_id}, not accepted")
            fragment = body[pos + 6 : pos + 4 + length]
            pos += 4 + length
            msg = self.message
            if msg is None:
                msg = self.message = _Message(context_id)
            elif msg.context_id != context_id:
                raise ProtocolError("a message's fragments arrived on two presentation contexts")
            if control & 0x01:
                self._command_fragment(msg, fragment, last=bool(control & 0x02))
            else:
                self._data_fragment(msg, fragment, last=bool(control & 0x02))

    def _command_fragment(self, msg: _Message, fragment: memoryview, *, last: bool) -> None:
        if msg.fields is not None:
            raise ProtocolError("command fragment after the command set was complete")
        msg.command += fragment
        if len(msg.command) > MAX_COMMAND:
            raise ProtocolError(f"command set longer than {MAX_COMMAND} bytes")
        if not last:
            return
        msg.fields = parse_command(msg.command)
        if _us(msg.fields.get(0x0110)) is None:
            # Checked before anything is staged: an object stored but never answered
            # would be retried (and exported) twice.
            raise ProtocolError("(0000,0110) MessageID missing from the command set")
        field = _us(msg.fields.get(0x0100))
        has_data = _us(msg.fields.get(0x0800)) != NO_DATA_SET
        if field == C_ECHO_RQ and not has_data:
            self.message = None
            self._answer(msg, C_ECHO_RSP, 0x0000, with_instance=False)
            return
        if field != C_STORE_RQ:
            raise ProtocolError(
                f"(0000,0100) CommandField 0x{field or 0:04X} is not supported here "
                "(this SCP serves C-STORE and C-ECHO)"
            )
        if not has_data:
            self.message = None
            self._answer(msg, C_STORE_RSP, 0x0000, refusal=(StoreStatus.CANNOT_UNDERSTAND,
                         "C-STORE-RQ without a data set"))  # fmt: skip
            return
        self._open_store(msg)

    def _open_store(self, msg: _Message) -> None:
        """Start staging a C-STORE data set (or decide to refuse it once it arrived)."""
        assert msg.fields is not None
        abstract, ts = self.contexts[msg.context_id]
        sop_class = _uid_text(msg.fields.get(0x0002))
        sop_instance = _uid_text(msg.fields.get(0x1000))
        if abstract == VERIFICATION:
            msg.refusal = (StoreStatus.CANNOT_UNDERSTAND, "C-STORE on the Verification context")
            return
        if not sop_class or not sop_instance:
            msg.refusal = (
                StoreStatus.CANNOT_UNDERSTAND,
                "(0000,0002)/(0000,1000) missing in the C-STORE-RQ",
            )
            return
        for tag, keyword, value in (
            ("(0000,0002)", "AffectedSOPClassUID", sop_class),
            ("(0000,1000)", "AffectedSOPInstanceUID", sop_instance),
        ):
            try:
                check_uid(value, tag, keyword)
            except UnsafePath as exc:
                log.error(
                    "C-STORE from %s (%s) refused: %s", self.calling_ae, self.peer, exc,
                    extra=fields(calling_ae=self.calling_ae),
                )  # fmt: skip
                msg.refusal = (StoreStatus.CANNOT_UNDERSTAND, f"{tag} {keyword} is not a valid UID")
                return
        if sop_class not in self.ctx.storage_classes:
            # Sent on a context negotiated for another class: a private or unknown class
            # refused at negotiation must not be stored through a CT context (PS3.7 10.1:
            # a DIMSE-C command's SOP class is its presentation context's abstract syntax).
            log.error(
                "C-STORE from %s (%s) refused: (0000,0002) AffectedSOPClassUID %s is not a "
                "storage SOP class this SCP accepts (sent on presentation context %d, "
                "negotiated for %s): the sending system must propose the object's own SOP "
                "class and send it on that context",
                self.calling_ae, self.peer, sop_class, msg.context_id, abstract,
                extra=fields(sop_instance_uid=sop_instance, calling_ae=self.calling_ae),
            )  # fmt: skip
            msg.refusal = (
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                "(0000,0002) AffectedSOPClassUID: SOP class not supported",
            )
            return
        try:
            self.ctx.archive.check_space(0)
        except OutOfSpace as exc:
            log.error(
                "C-STORE refused: %s",
                exc,
                extra=fields(sop_instance_uid=sop_instance, calling_ae=self.calling_ae),
            )
            msg.refusal = (StoreStatus.OUT_OF_RESOURCES, "out of resources: disk floor reached")
            return
        meta = file_meta_bytes(sop_class, sop_instance, str(ts), self.calling_ae)
        try:
            fd, staged = self._take_staging_file()
        except OSError as exc:
            log.error("cannot create a staging file in %s: %s", self.ctx.archive.incoming, exc)
            msg.refusal = (StoreStatus.OUT_OF_RESOURCES, "out of resources: cannot write")
            return
        msg.fd, msg.staged, msg.data_offset = fd, staged, len(meta)
        self._write(msg, memoryview(meta))

    def _take_staging_file(self) -> tuple[int, Path]:
        """The spare staging file made while the sender prepared this object, or a new one."""
        spare, self._spare = self._spare, None
        return spare if spare is not None else self._new_staging_file()

    def _new_staging_file(self) -> tuple[int, Path]:
        return self.ctx.archive.new_incoming_file("rx")

    def _prepare_spare(self) -> None:
        """Create the next staging file now: creating a file costs ~0.1-0.3 ms on ext4,
        spent here while the sender reads its next file instead of on the critical path."""
        if self._spare is None and not self.closed:
            with contextlib.suppress(OSError):
                self._spare = self._new_staging_file()

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            with contextlib.suppress(OSError):
                os.close(spare[0])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spare[1])

    def _write(self, msg: _Message, data: memoryview) -> None:
        assert msg.fd is not None
        view = data
        try:
            while view:
                n = os.write(msg.fd, view)
                view = view[n:]
        except OSError as exc:
            log.error("cannot stage a received object: %s", exc)
            msg.discard()
            msg.refusal = (StoreStatus.OUT_OF_RESOURCES, "out of resources: cannot write")

    def _data_fragment(self, msg: _Message, fragment: memoryview, *, last: bool) -> None:
        if msg.fields is None:
            raise ProtocolError("data set fragment before the command set")
        msg.size += len(fragment)
        if len(msg.head) < HEAD_BYTES:
            msg.head += fragment[: HEAD_BYTES - len(msg.head)]
        if msg.fd is not None:
            self._write(msg, fragment)
            msg.since_check += len(fragment)
            if msg.since_check >= CHECK_EVERY and msg.fd is not None:
                msg.since_check = 0
                try:
                    self.ctx.archive.check_space(0)
                except OutOfSpace:
                    msg.discard()  # the rest is drained; refused when complete
                    msg.refusal = (
                        StoreStatus.OUT_OF_RESOURCES,
                        "out of resources: disk floor reached",
                    )
        if last:
            self.message = None
            self._finish_store(msg)

    def _finish_store(self, msg: _Message) -> None:
        assert msg.fields is not None
        _abstract, ts = self.contexts[msg.context_id]
        sop_class = _uid_text(msg.fields.get(0x0002))
        sop_instance = _uid_text(msg.fields.get(0x1000))
        try:
            if msg.refusal is not None or msg.staged is None:
                refusal = msg.refusal or (StoreStatus.PROCESSING_FAILURE, "not staged")
                log.error(
                    "C-STORE refused: %s",
                    refusal[1],
                    extra=fields(sop_instance_uid=sop_instance, calling_ae=self.calling_ae),
                )
                self._answer(msg, C_STORE_RSP, 0, refusal=refusal)
                return
            assert msg.fd is not None
            os.close(msg.fd)
            msg.fd = None
            status, comment = store_object(
                self.ctx,
                Staged(msg.staged, msg.data_offset),
                transfer_syntax=str(ts),
                implicit=ts.is_implicit_VR,
                little=ts.is_little_endian,
                calling_ae=self.calling_ae,
                command_sop=sop_instance,
                command_class=sop_class,
                header=read_header_prefix(
                    msg.head,
                    ts.is_implicit_VR,
                    ts.is_little_endian,
                    complete=msg.size <= len(msg.head),
                ),
            )
        finally:
            msg.discard()  # a staged file not moved into the archive
        if status == StoreStatus.SUCCESS:
            self.stored += 1
        self._answer(msg, C_STORE_RSP, 0, refusal=None if status == 0 else (status, comment))
        self._prepare_spare()

    def _answer(
        self,
        msg: _Message,
        field: int,
        status: int,
        *,
        refusal: tuple[StoreStatus, str] | None = None,
        with_instance: bool = True,
    ) -> None:
        assert msg.fields is not None
        msg_id = _us(msg.fields.get(0x0110))
        if msg_id is None:
            raise ProtocolError("(0000,0110) MessageID missing")
        comment = ""
        if refusal is not None:
            status, comment = int(refusal[0]), refusal[1]
        command = response_command(
            field,
            msg_id,
            _uid_text(msg.fields.get(0x0002)),
            status,
            _uid_text(msg.fields.get(0x1000)) if with_instance else "",
            comment,
        )
        self._send_command(msg.context_id, command)


# ------------------------------------------------------------------ installation


def install(
    assoc: Any,
    ctx: StoreContext,
    settings: DataPhaseSettings,
    on_close: Callable[[], None],
) -> None:
    """Arrange for ``assoc`` to run :class:`DataPhase` once accepted, if eligible.

    Two hooks on this association's own objects: its socket's ``send`` notes when the
    A-ASSOCIATE-AC has been written and from then on stops the DUL thread from reading
    (``_node_hold``, see :mod:`node.receive.guard`), so no PDU of the data phase can be
    consumed by pynetdicom; and its reactor (``_run_reactor``, called once the association
    is established) decides: our data phase, or pynetdicom's reactor unchanged.
    """
    sock = assoc.dul.socket
    accepted = threading.Event()
    original_send = sock.send
    original_reactor = assoc._run_reactor

    def send(bytestream: bytes) -> None:
        if bytestream[:1] == b"\x02" and not accepted.is_set():  # A-ASSOCIATE-AC
            sock._node_hold = True
            original_send(bytestream)
            accepted.set()
            return
        original_send(bytestream)

    def reactor() -> None:
        sent = accepted.wait(settings.accept_timeout)
        if not sent or not eligible(assoc, ctx.storage_classes) or sock.socket is None:
            sock._node_hold = False
            sock.wake()
            original_reactor()
            return
        dul = assoc.dul
        dul._kill_thread = True
        sock.wake()
        dul.join(5)
        if dul.is_alive():  # pragma: no cover - the DUL never blocks while held
            log.error("pynetdicom's DUL thread did not stop: staying on its path")
            dul._kill_thread = False
            sock._node_hold = False
            original_reactor()
            return
        phase = DataPhase(assoc, ctx, settings)
        assoc._dicom_node_phase = phase
        ended = "failed"
        try:
            ended = phase.run()
            log.info("association with %s %s (%d stored)", phase.calling_ae, ended, phase.stored)
        finally:
            assoc.is_established = False
            if ended == "released":
                assoc.is_released = True
            else:
                assoc.is_aborted = True
            assoc._kill = True
            with contextlib.suppress(OSError):
                phase.sock.close()
            on_close()

    if hasattr(assoc, "_run_reactor") and hasattr(sock, "wake"):
        sock.send = send
        assoc._run_reactor = reactor


def handle_conn_open(event: Any, ctx: StoreContext, settings: DataPhaseSettings) -> None:
    """EVT_CONN_OPEN, bound after :func:`node.receive.handlers.handle_conn_open`."""
    assoc = event.assoc

    def on_close() -> None:
        tracker = getattr(assoc, "_dicom_node_spills", None)
        if tracker is not None:
            tracker.discard_all()
        close_wakeup = getattr(assoc, "_dicom_node_close_wakeup", None)
        if callable(close_wakeup):
            close_wakeup()

    install(assoc, ctx, settings, on_close)
