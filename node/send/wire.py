"""The DIMSE data phase of the C-STORE SCU on the raw socket (PS3.7, PS3.8 9.3.5).

``acse`` establishes the association; :class:`Wire` then speaks on its socket, blocking in
``recv`` (no polling threads, no per-PDU hand-offs):

* C-STORE-RQ: the command set (Implicit VR Little Endian, PS3.7 9.3.1.1) in one PDV, then
  the data set streamed from the file (bytes after the file meta) or from memory, in
  P-DATA-TF PDUs no larger than the peer's maximum length (PS3.8 9.3.5);
* C-STORE-RSP: PDVs collected until the last command fragment, the command set parsed, the
  response matched to the request (Message ID Being Responded To, Affected SOP Instance
  UID) and classified;
* C-ECHO-RQ/RSP the same way, without a data set;
* A-RELEASE-RQ/RP at the end, or A-ABORT on any protocol error.

Any error is a retry for the file in flight; the association is then unusable and the rest
of the batch goes back to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import sys
from collections.abc import Callable
from io import BufferedReader

from node.send import status as st
from node.send.status import Outcome
from node.sockopts import kernel_timeouts

log = logging.getLogger(__name__)

_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
_ELEM = struct.Struct("<HHI")
VERIFICATION = "1.2.840.10008.1.1"
#: Responses (command sets, A-RELEASE-RP, A-ABORT) are small; a longer PDU is a broken peer.
MAX_RESPONSE_PDU = 16 * 1024 * 1024
#: The largest PDV fragment we send (and the read buffer of a streamed file).
MAX_FRAGMENT = 4 * 1024 * 1024
#: recv() size: a C-STORE response PDU (~200 bytes) comes in one call, header and body.
RECV_SIZE = 64 * 1024


class WireError(Exception):
    """The association cannot go on (protocol error, abort, timeout, closed socket)."""


#: A connection that went away under an association, worded alike by both SCU engines.
CONNECTION_LOST = (
    "the connection was lost (the peer closed or reset it: a PACS that stopped or"
    " crashed, or a firewall cutting the connection; see the PACS's log)"
)


def dimse_timeout_text(timeout: float | None) -> str:
    """No response within the DIMSE timeout, worded alike by both SCU engines (without a
    timeout, the kernel's own ETIMEDOUT ended the wait)."""
    if not timeout or timeout <= 0:
        return "no C-STORE response: the connection timed out (no DIMSE timeout set)"
    return f"no C-STORE response within the DIMSE timeout ({timeout:g} s)"


def peer_abort_text(source: int, reason: int) -> str:
    """The peer's A-ABORT during a C-STORE, worded alike by both SCU engines."""
    return (
        "association failed during the C-STORE: the peer aborted the association "
        f"({abort_text(source, reason)})"
    )


class PeerAborted(WireError):
    """The peer sent A-ABORT (PS3.8 9.3.8): its source and reason."""

    def __init__(self, source: int, reason: int) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"the peer aborted the association ({abort_text(source, reason)})")


#: A-ABORT reasons of the service provider (PS3.8 Table 9-26).
_ABORT_REASONS = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


def abort_text(source: int, reason: int) -> str:
    """An A-ABORT's source and reason (PS3.8 9.3.8) in words, with what usually causes it."""
    if source == 2:
        return f"A-ABORT from its DICOM service provider: {_ABORT_REASONS.get(reason, reason)}"
    if source == 0:
        return (
            "A-ABORT from the PACS application itself, no reason given; if it aborts every"
            " C-STORE it probably refuses our calling AE title or this object (Orthanc"
            " aborts so for an AE missing from DicomModalities with DicomAlwaysAllowStore"
            " false): see the PACS's log"
        )
    return f"A-ABORT, source {source}, reason {reason}"


# --------------------------------------------------------------------------- command sets


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _command_set(elems: list[tuple[int, bytes]]) -> bytes:
    """Group 0000 elements, Implicit VR Little Endian, CommandGroupLength first."""
    body = b"".join(_ELEM.pack(0x0000, el, len(v)) + v for el, v in elems)
    return _ELEM.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body


def store_rq_command(sop_class_uid: str, sop_instance_uid: str, msg_id: int) -> bytes:
    """C-STORE-RQ command set, Implicit VR Little Endian, group length first."""
    elems = [
        (0x0002, _uid(sop_class_uid)),  # AffectedSOPClassUID
        (0x0100, _us(0x0001)),  # CommandField: C-STORE-RQ
        (0x0110, _us(msg_id)),  # MessageID
        (0x0700, _us(0x0002)),  # Priority: LOW, as pynetdicom and storescu
        (0x0800, _us(0x0000)),  # CommandDataSetType: a data set follows
        (0x1000, _uid(sop_instance_uid)),  # AffectedSOPInstanceUID
    ]
    return _command_set(elems)


def echo_rq_command(msg_id: int) -> bytes:
    """C-ECHO-RQ command set (PS3.7 9.3.5.1): Verification SOP Class, no data set."""
    return _command_set(
        [
            (0x0002, _uid(VERIFICATION)),  # AffectedSOPClassUID
            (0x0100, _us(0x0030)),  # CommandField: C-ECHO-RQ
            (0x0110, _us(msg_id)),  # MessageID
            (0x0800, _us(0x0101)),  # CommandDataSetType: no data set
        ]
    )


def parse_command(data: bytes) -> dict[int, bytes]:
    """Command-set elements (group 0000) by element number -> raw value."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = _ELEM.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or pos + length > len(data):
            raise WireError(f"malformed command set at byte {pos - 8}")
        out[elem] = data[pos : pos + length]
        pos += length
    return out


def _text(raw: bytes | None) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ") if raw else ""


# --------------------------------------------------------------------------- the wire


class Wire:
    """Owns the association's socket for the data phase of one batch."""

    def __init__(
        self,
        sock: socket.socket,
        peer_max_pdu: int,
        *,
        dimse_timeout: float,
        network_timeout: float,
    ) -> None:
        self.sock = sock
        # PDV fragment size: the peer's maximum PDU length minus the PDV item header (6),
        # at most MAX_FRAGMENT (a peer announcing 1 GiB, like one announcing no limit, must
        # not make us hold a whole file in memory) and even (as every element is).
        limit = peer_max_pdu - 6 if peer_max_pdu else MAX_FRAGMENT
        self.fragment = min(limit, MAX_FRAGMENT) & ~1
        # 0 or less means "no limit" (a zero socket timeout would mean non-blocking).
        self.dimse_timeout = dimse_timeout if dimse_timeout > 0 else None
        self.network_timeout = network_timeout if network_timeout > 0 else None
        self.closed = False
        self.released = False
        ssl = sys.modules.get("ssl")  # not imported at all unless some connection uses TLS
        # TLS sockets have no sendmsg (scatter/gather): they get header + fragment joined.
        self._gather = not (ssl is not None and isinstance(sock, ssl.SSLSocket))
        #: Plain TCP: the socket blocks and the kernel keeps the timeouts, which saves a
        #: poll() before every send and recv and an ioctl per switch (~6 system calls per
        #: C-STORE) and a partial send of each large PDU. The data phase only waits for
        #: responses: one receive timeout (DIMSE) and one send timeout (network) hold for
        #: the whole association. TLS keeps Python's timeouts, switched per phase.
        self._kernel_timeouts = self._gather and kernel_timeouts(
            sock, send=self.network_timeout, recv=self.dimse_timeout
        )
        if not self._kernel_timeouts:
            self.sock.settimeout(self.network_timeout)
        #: Bytes received and not yet consumed (a response usually comes in one recv).
        self._rbuf = bytearray()

    def _timeouts(self, waiting_for_response: bool) -> None:
        """Python-managed timeouts (TLS): the DIMSE timeout while a response is awaited,
        the network timeout otherwise. Nothing to do when the kernel keeps them."""
        if not self._kernel_timeouts:
            self.sock.settimeout(
                self.dimse_timeout if waiting_for_response else self.network_timeout
            )

    # ------------------------------------------------------------------ PDUs

    def _send_pdv(self, context_id: int, control: int, data: bytes | memoryview) -> None:
        header = _PDU_HEADER.pack(0x04, 0, len(data) + 6) + _PDV_HEADER.pack(
            len(data) + 2, context_id, control
        )
        if not self._gather:
            self.sock.sendall(header + bytes(data))
            return
        total = len(header) + len(data)
        try:
            sent = self.sock.sendmsg([header, data])  # gather: no copy of the fragment
            if sent < total:  # a partial send (timeout or signal): finish with sendall
                rest = (header + bytes(data))[sent:]
                self.sock.sendall(rest)
        except BlockingIOError:  # SO_SNDTIMEO ran out: the peer stopped reading
            raise TimeoutError("sending timed out (network_timeout)") from None

    def _recv_exact(self, n: int) -> bytes:
        buf = self._rbuf
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(max(n - len(buf), RECV_SIZE), MAX_FRAGMENT))
            except BlockingIOError:  # SO_RCVTIMEO ran out
                raise TimeoutError("nothing received within the timeout") from None
            if not chunk:
                raise ConnectionResetError("the peer closed the connection")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _recv_pdu(self) -> tuple[int, bytes]:
        kind, _, length = _PDU_HEADER.unpack(self._recv_exact(6))
        if length > MAX_RESPONSE_PDU:
            raise WireError(f"PDU 0x{kind:02X} of {length} bytes: a response is never that long")
        return kind, self._recv_exact(length)

    # ------------------------------------------------------------------ C-STORE

    def store(
        self,
        context_id: int,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        msg_id: int,
        source: BufferedReader | None = None,
        data: bytes | None = None,
        offset: int = 0,
        while_waiting: Callable[[], None] | None = None,
    ) -> Outcome:
        """Send one C-STORE-RQ (an open file's bytes from ``offset``, or ``data``) and
        classify the answer.

        ``while_waiting`` runs once the request is sent, before the response is read: the
        peer is then busy storing, so work done there (reading the next file) costs the
        association no time. It must not raise."""
        waiting = False
        try:
            self._timeouts(waiting_for_response=False)
            self._send_pdv(
                context_id, 0x03, store_rq_command(sop_class_uid, sop_instance_uid, msg_id)
            )
            if source is not None:
                self._send_file(context_id, source, offset)
            else:
                self._send_bytes(context_id, data or b"")
            if while_waiting is not None:
                while_waiting()
            waiting = True
            self._timeouts(waiting_for_response=True)
            command = self._receive_response(context_id)
        except (OSError, WireError) as exc:
            if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
                self.abort()
                raise
            if isinstance(exc, TimeoutError):
                reason = (
                    dimse_timeout_text(self.dimse_timeout)
                    if waiting
                    else "association failed during the C-STORE: the peer stopped reading "
                    "(sending timed out after the network timeout)"
                )
            elif isinstance(exc, ConnectionError):  # reset, broken pipe, closed (EOF)
                reason = f"association failed during the C-STORE: {CONNECTION_LOST} [{exc}]"
            elif isinstance(exc, PeerAborted):
                reason = peer_abort_text(exc.source, exc.reason)
            else:
                reason = f"association failed during the C-STORE: {exc}"
            self.abort()
            return st.retry(reason)
        return self._classify(command, msg_id, sop_instance_uid)

    def _send_file(self, context_id: int, f: BufferedReader, offset: int) -> None:
        size = f.seek(0, 2) - offset
        f.seek(offset)
        buf = bytearray(min(self.fragment, max(size, 0)))
        view = memoryview(buf)
        left = size
        while True:
            n = f.readinto(view[: min(len(buf), left)]) if left > 0 else 0
            left -= n
            if left <= 0:
                self._send_pdv(context_id, 0x02, view[:n])
                return
            if n == 0:  # the file shrank while being sent: never send a cut data set
                raise WireError(f"the file ended {left} bytes early while being sent")
            self._send_pdv(context_id, 0x00, view[:n])

    def _send_bytes(self, context_id: int, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, max(len(data), 1), self.fragment):
            chunk = view[start : start + self.fragment]
            last = start + self.fragment >= len(data)
            self._send_pdv(context_id, 0x02 if last else 0x00, chunk)

    def _receive_response(self, context_id: int) -> dict[int, bytes]:
        command = bytearray()
        while True:
            kind, body = self._recv_pdu()
            if kind == 0x07:  # A-ABORT
                source, reason = (body[2], body[3]) if len(body) >= 4 else (0, 0)
                self._close(released=False)  # nothing more to say on it: close the socket
                raise PeerAborted(source, reason)
            if kind != 0x04:
                raise WireError(
                    f"unexpected PDU type 0x{kind:02X} while waiting for a DIMSE response"
                )
            pos = 0
            while pos + 6 <= len(body):
                length, _cx, control = _PDV_HEADER.unpack_from(body, pos)
                fragment = body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x01:
                    command += fragment
                    if control & 0x02:
                        return parse_command(bytes(command))
                # data-set fragments in a response are ignored (C-STORE-RSP has none)

    def _classify(self, command: dict[int, bytes], msg_id: int, sop_uid: str) -> Outcome:
        field = struct.unpack("<H", command.get(0x0100, b"\x00\x00"))[0]
        responding = command.get(0x0120)
        answered = struct.unpack("<H", responding)[0] if responding else None
        status_raw = command.get(0x0900)
        if field != 0x8001 or answered != msg_id or status_raw is None:
            log.error(
                "unexpected DIMSE message (command 0x%04X, responding to %s) for message %d",
                field,
                answered,
                msg_id,
            )
            self.abort()
            return st.retry("unexpected DIMSE message instead of the C-STORE response")
        uid = _text(command.get(0x1000))
        if uid and uid != sop_uid:
            self.abort()
            return st.retry(f"C-STORE response names another SOP Instance UID ({uid})")
        status = struct.unpack("<H", status_raw)[0]
        return st.classify_status(status, _text(command.get(0x0902)))

    # ------------------------------------------------------------------ C-ECHO

    def echo(self, context_id: int, msg_id: int = 1) -> Outcome:
        """One C-ECHO on the Verification context: delivered when the peer answers 0x0000."""
        try:
            self._timeouts(waiting_for_response=False)
            self._send_pdv(context_id, 0x03, echo_rq_command(msg_id))
            self._timeouts(waiting_for_response=True)
            command = self._receive_response(context_id)
        except (OSError, WireError) as exc:
            self.abort()
            return st.retry(f"no C-ECHO response: {exc}")
        field = struct.unpack("<H", command.get(0x0100, b"\x00\x00"))[0]
        responding = command.get(0x0120)
        status_raw = command.get(0x0900)
        if field != 0x8030 or responding != _us(msg_id) or status_raw is None:
            self.abort()
            return st.retry("unexpected DIMSE message instead of the C-ECHO response")
        status = struct.unpack("<H", status_raw)[0]
        if status == 0x0000:
            return st.DELIVERED
        return st.dead(f"C-ECHO failed: {st.status_text(status, _text(command.get(0x0902)))}")

    # ------------------------------------------------------------------ ending

    def release(self) -> None:
        """A-RELEASE-RQ, wait for the RP, close."""
        if self.closed:
            return
        try:
            self.sock.settimeout(self.network_timeout)
            self.sock.sendall(_PDU_HEADER.pack(0x05, 0, 4) + b"\x00" * 4)
            while True:
                kind, _ = self._recv_pdu()
                if kind == 0x06:
                    break
                if kind == 0x07:
                    break
        except (OSError, WireError) as exc:
            log.warning("release failed (%s); aborting", exc)
            self.abort()
            return
        self._close(released=True)

    def abort(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self.sock.settimeout(2.0)
            self.sock.sendall(_PDU_HEADER.pack(0x07, 0, 4) + b"\x00\x00\x00\x00")
        self._close(released=False)

    def _close(self, *, released: bool) -> None:
        self.closed = True
        self.released = released
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
