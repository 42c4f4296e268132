"""Association establishment for the C-STORE SCU: A-ASSOCIATE on a plain socket (PS3.8).

The requestor side only, and only what a storage SCU needs: one A-ASSOCIATE-RQ with an
application context, the proposed presentation contexts (one transfer syntax each) and
the user information (maximum length, implementation class UID and version name), then
the peer's answer:

* A-ASSOCIATE-AC (PS3.8 9.3.3): the result of every proposed context and the peer's
  maximum PDU length, as an :class:`Association` for ``wire`` to run the data phase on
  (a context "accepted" with a transfer syntax we did not propose in it counts as not
  accepted: :func:`sort_context`);
* A-ASSOCIATE-RJ (PS3.8 9.3.4): :class:`Rejected`, with the result, source and reason in
  the words of PS3.8 Table 9-21 (the same words pynetdicom uses);
* anything else (A-ABORT, another PDU, a malformed answer, a timeout, a closed socket):
  :class:`AssociationError`.

Why not pynetdicom here: ``import pynetdicom`` costs about 0.4 s (it imports pydicom, which
imports numpy and registers its pixel decoders), more than sending 200 objects, and its
requestor runs two polling threads per association. The encoding is small and fixed, and
is checked against pynetdicom's own PDU decoder in the tests. No role selection, extended
negotiation or asynchronous operations are proposed (the SCU sends one request at a time).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from node.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

if TYPE_CHECKING:  # ssl (~12 ms to import) only when a destination uses TLS
    import ssl

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # DICOM Application Context Name (PS3.7 A.2.1)
PROTOCOL_VERSION = 0x0001
#: The largest A-ASSOCIATE-AC/RJ body we read; a real one with 128 contexts is < 16 KiB.
MAX_ANSWER = 1024 * 1024
#: A peer announcing a maximum PDU length this small cannot carry a PDV header and data.
MIN_PEER_PDU = 16

_PDU_HEADER = struct.Struct(">BBI")
_ITEM_HEADER = struct.Struct(">BBH")

RESULTS = {1: "Rejected Permanent", 2: "Rejected Transient"}
SOURCES = {
    1: "Service User",
    2: "Service Provider (ACSE)",
    3: "Service Provider (Presentation)",
}
REASONS = {
    1: {
        1: "No reason given",
        2: "Application context name not supported",
        3: "Calling AE title not recognised",
        7: "Called AE title not recognised",
    },
    2: {1: "No reason given", 2: "Protocol version not supported"},
    3: {1: "Temporary congestion", 2: "Local limit exceeded"},
}
#: A-ASSOCIATE-AC presentation context results (PS3.8 Table 9-18).
CONTEXT_RESULTS = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason (provider rejection)",
    3: "abstract-syntax-not-supported (provider rejection)",
    4: "transfer-syntaxes-not-supported (provider rejection)",
}
#: Not a PS3.8 result: the peer answered "acceptance" with a transfer syntax that was not
#: proposed in that context, which PS3.8 9.3.3.2 does not allow (the acceptor picks one of
#: the proposed syntaxes). Such a context is treated as not accepted.
OTHER_SYNTAX = 0x100


class AssociationError(Exception):
    """The association could not be established (and may work on a later attempt)."""


class Rejected(Exception):
    """The peer answered A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result, self.source, self.reason = result, source, reason
        super().__init__(
            f"{RESULTS.get(result, f'result {result}')} "
            f"({SOURCES.get(source, f'source {source}')}: "
            f"{REASONS.get(source, {}).get(reason, f'reason {reason}')})"
        )

    @property
    def transient(self) -> bool:
        """PS3.8 7.1.1.9: result 2 is rejected-transient (try again later)."""
        return self.result == 2


@dataclass
class Association:
    """An established association: its socket and what the peer accepted."""

    sock: socket.socket
    #: (abstract syntax, transfer syntax) -> presentation context ID, accepted ones only.
    contexts: dict[tuple[str, str], int]
    #: The peer's maximum P-DATA-TF length (0: no limit).
    peer_max_pdu: int
    peer_implementation: str = ""
    #: (abstract syntax, transfer syntax) -> result of each refused context (PS3.8 9-18,
    #: or :data:`OTHER_SYNTAX`).
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Contexts "accepted" with a syntax we did not propose: -> (context ID, that syntax).
    strays: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- encoding


def _ae(title: str) -> bytes:
    raw = title.encode("ascii", "replace")
    if not 0 < len(raw.strip()) <= 16 or not title.isascii() or "\\" in title:
        raise ValueError(
            f"AE title {title!r} must be 1 to 16 ASCII characters without a backslash (PS3.5 AE)"
        )
    return raw.ljust(16, b" ")


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM_HEADER.pack(kind, 0, len(value)) + value


def encode_request(
    called_ae: str,
    calling_ae: str,
    contexts: Sequence[tuple[str, str]],
    max_pdu: int,
) -> bytes:
    """The A-ASSOCIATE-RQ PDU proposing ``contexts`` (IDs 1, 3, 5 ... in order).

    ``max_pdu`` is the largest P-DATA-TF we accept (0: no limit). UIDs are not padded in
    these items (PS3.8 9.3.2.2).
    """
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts: at most 128 fit (IDs 1..255)")
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for n, (abstract, transfer) in enumerate(contexts):
        sub = _item(0x30, abstract.encode("ascii")) + _item(0x40, transfer.encode("ascii"))
        items.append(_item(0x20, bytes((2 * n + 1, 0, 0, 0)) + sub))
    user = (
        _item(0x51, struct.pack(">I", max_pdu))
        + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
        + _item(0x55, IMPLEMENTATION_VERSION_NAME.encode())
    )
    items.append(_item(0x50, user))
    body = (
        struct.pack(">HH", PROTOCOL_VERSION, 0)
        + _ae(called_ae)
        + _ae(calling_ae)
        + bytes(32)
        + b"".join(items)
    )
    return _PDU_HEADER.pack(0x01, 0, len(body)) + body


# --------------------------------------------------------------------------- decoding


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ")


def _items(data: bytes, start: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = start
    while pos < len(data):
        if pos + 4 > len(data):
            raise AssociationError(f"malformed A-ASSOCIATE-AC: item header cut at byte {pos}")
        kind, _, length = _ITEM_HEADER.unpack_from(data, pos)
        pos += 4
        if pos + length > len(data):
            raise AssociationError(
                f"malformed A-ASSOCIATE-AC: item 0x{kind:02X} of {length} bytes overruns the PDU"
            )
        out.append((kind, data[pos : pos + length]))
        pos += length
    return out


def decode_accept(
    body: bytes,
    proposed: Sequence[tuple[str, str]],
    refusals: dict[tuple[str, str], int] | None = None,
    strays: dict[tuple[str, str], tuple[int, str]] | None = None,
) -> tuple[dict[tuple[str, str], int], int, str]:
    """From an A-ASSOCIATE-AC body: accepted contexts, the peer's max PDU, its implementation.

    A context counts as accepted only when its result is 0 and the peer named the transfer
    syntax we proposed in it (each of our contexts carries exactly one); see
    :func:`sort_context`. ``refusals``, when given, receives the result (PS3.8 Table 9-18,
    or :data:`OTHER_SYNTAX`) of every context not accepted, ``strays`` the context ID and
    the syntax of each one accepted with a syntax we did not propose.
    """
    if len(body) < 68:
        raise AssociationError(f"malformed A-ASSOCIATE-AC: {len(body)} bytes, at least 68 needed")
    accepted: dict[tuple[str, str], int] = {}
    peer_max = 0
    implementation = ""
    refused: list[str] = []
    for kind, value in _items(body, 68):
        if kind == 0x21:
            if len(value) < 4:
                raise AssociationError("malformed A-ASSOCIATE-AC: short presentation context")
            cx_id, result = value[0], value[2]
            n = (cx_id - 1) // 2
            if cx_id % 2 == 0 or not 0 <= n < len(proposed):
                raise AssociationError(
                    f"A-ASSOCIATE-AC answers presentation context {cx_id}, which was not proposed"
                )
            if result != 0:
                refused.append(f"{cx_id}: {CONTEXT_RESULTS.get(result, result)}")
            syntaxes = [_uid(v) for k, v in _items(value, 4) if k == 0x40]
            sort_context(
                cx_id,
                proposed[n],
                result,
                syntaxes[0] if syntaxes else "",
                accepted,
                refusals if refusals is not None else {},
                strays if strays is not None else {},
            )
        elif kind == 0x50:
            for sub, sub_value in _items(value, 0):
                if sub == 0x51 and len(sub_value) == 4:
                    peer_max = struct.unpack(">I", sub_value)[0]
                elif sub == 0x52:
                    implementation = _uid(sub_value)
    if 0 < peer_max < MIN_PEER_PDU:
        raise AssociationError(f"the peer's maximum PDU length {peer_max} is too small")
    if refused:
        log.debug("presentation contexts refused: %s", "; ".join(refused))
    return accepted, peer_max, implementation


def sort_context(
    cx_id: int,
    proposed: tuple[str, str],
    result: int,
    syntax: str,
    accepted: dict[tuple[str, str], int],
    refusals: dict[tuple[str, str], int],
    strays: dict[tuple[str, str], tuple[int, str]],
) -> None:
    """File one answered presentation context (shared by both SCU engines).

    Accepted (result 0 with the transfer syntax we proposed in it) goes to ``accepted``;
    refused to ``refusals`` with its result. A context "accepted" with another syntax
    breaks PS3.8 9.3.3.2 (the acceptor picks one of the proposed syntaxes): the peer would
    decode our data set in a syntax we did not write it in. It is treated as not accepted
    (``refusals`` gets :data:`OTHER_SYNTAX`, ``strays`` the ID and the syntax), with a
    warning, and the association goes on with the other contexts.
    """
    if result != 0:
        refusals[proposed] = result
    elif syntax != proposed[1]:
        refusals[proposed] = OTHER_SYNTAX
        strays[proposed] = (cx_id, syntax)
        log.warning(
            "the peer accepted presentation context %d (%s) with transfer syntax %s, "
            "which was not proposed in it (proposed: %s): the peer is not conformant "
            "(PS3.8 9.3.3.2); the context is treated as not accepted",
            cx_id,
            uid_name(proposed[0]),
            uid_name(syntax) if syntax else "none",
            uid_name(proposed[1]),
        )
    else:
        accepted[proposed] = cx_id


def uid_name(uid: str) -> str:
    """``Name (uid)`` for a UID pydicom knows, else the UID (pydicom imported only here)."""
    from pydicom.uid import UID

    name = UID(uid).name
    return uid if name == uid else f"{name} ({uid})"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AssociationError("the peer closed the connection during association")
        buf += chunk
    return bytes(buf)


# --------------------------------------------------------------------------- requesting


def negotiate(
    sock: socket.socket,
    *,
    called_ae: str,
    calling_ae: str,
    contexts: Sequence[tuple[str, str]],
    max_pdu: int,
    timeout: float | None,
) -> Association:
    """Send the A-ASSOCIATE-RQ on a connected socket and read the answer.

    Raises :class:`Rejected` or :class:`AssociationError`, or ValueError for a request
    that cannot be encoded (an AE title that is empty, too long or not ASCII; more than
    128 contexts); the socket is then closed.
    """
    try:
        request = encode_request(called_ae, calling_ae, contexts, max_pdu)
    except ValueError:
        _close(sock, abort=False)
        raise
    try:
        sock.settimeout(timeout)
        sock.sendall(request)
        kind, _, length = _PDU_HEADER.unpack(_recv_exact(sock, 6))
        if length > MAX_ANSWER:
            raise AssociationError(f"answer PDU 0x{kind:02X} of {length} bytes is too long")
        body = _recv_exact(sock, length)
        if kind == 0x02:
            refusals: dict[tuple[str, str], int] = {}
            strays: dict[tuple[str, str], tuple[int, str]] = {}
            accepted, peer_max, implementation = decode_accept(body, contexts, refusals, strays)
            return Association(sock, accepted, peer_max, implementation, refusals, strays)
        if kind == 0x03 and len(body) >= 4:
            raise Rejected(body[1], body[2], body[3])
        if kind == 0x07:
            raise AssociationError("the peer aborted the association during negotiation")
        raise AssociationError(f"unexpected PDU type 0x{kind:02X} in answer to A-ASSOCIATE-RQ")
    except TimeoutError:
        _close(sock, abort=True)
        raise AssociationError("no answer to A-ASSOCIATE-RQ within the ACSE timeout") from None
    except OSError as exc:
        _close(sock, abort=False)
        raise AssociationError(f"connection failed during association: {exc}") from None
    except Rejected:
        _close(sock, abort=False)
        raise
    except AssociationError:
        _close(sock, abort=True)
        raise


def connect(
    host: str,
    port: int,
    *,
    timeout: float | None,
    tls: ssl.SSLContext | None = None,
) -> socket.socket:
    """A TCP connection with Nagle off (and TLS when ``tls`` is given); OSError if it fails.

    Without TCP_NODELAY each C-STORE would wait ~40 ms for the peer's delayed ACK. An ASCII
    host goes to getaddrinfo as bytes: as a str it is run through the idna codec, the same
    bytes for an ASCII name but ~2 ms of imports (encodings.idna, stringprep, unicodedata)
    in every short ``dicom-node send``.
    """
    address = host.encode("ascii") if host.isascii() else host
    # typeshed allows only str, but the host goes to getaddrinfo as is, and it takes bytes
    sock = socket.create_connection((address, port), timeout=timeout)  # type: ignore[arg-type]
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:  # server_hostname: SNI, and the name checked if check_hostname
            return tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return sock


def _close(sock: socket.socket, *, abort: bool) -> None:
    with contextlib.suppress(OSError):
        if abort:
            sock.settimeout(2.0)
            sock.sendall(_PDU_HEADER.pack(0x07, 0, 4) + bytes(4))
    with contextlib.suppress(OSError):
        sock.close()
