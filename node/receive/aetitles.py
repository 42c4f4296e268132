"""Screening the AE titles of an A-ASSOCIATE-RQ before pynetdicom decodes it.

An AE title is 1-16 characters of the DICOM default character repertoire, without
backslash or control characters, leading and trailing spaces not significant (PS3.5 6.2,
PS3.8 9.3.2). pynetdicom 3.0 decodes the request's titles as it parses the PDU: a byte
outside that repertoire (0xE9, a control character) or a title of spaces only makes it
log the error with a traceback and answer A-ABORT, from inside its DUL thread. A hostile
or broken requestor was thus answered with an abort and a traceback in the node's log.

:func:`screen_ae_titles` looks at the two titles of the raw A-ASSOCIATE-RQ (PS3.8 Table
9-11: called AE title at bytes 10-25, calling at 26-41) first. One that pynetdicom would
refuse is answered A-ASSOCIATE-RJ (PS3.8 9.3.4: result 1 rejected-permanent, source 1
DICOM UL service-user, reason 7 "called-AE-title-not-recognized" or 3
"calling-AE-title-not-recognized"), logged once with the peer's address, and the
connection closed; pynetdicom sees the transport closed before any request (Sta2 ->
Sta1), so its association thread ends at once and the slot is free.

A title padded with NUL bytes instead of spaces (``b"CT01\\0\\0..."``, written by C code
that copies a string into the 16-byte field) is not conformant either, but DCMTK (and so
Orthanc and storescp) reads the field as a C string and accepts it: the NULs are turned
into the spaces they stand for (:func:`pad_with_spaces`) before pynetdicom decodes the
request, so such a modality can store here as it can there.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from node.receive.guard import send_and_shut

log = logging.getLogger(__name__)

#: (first byte, last byte + 1) of each title in an A-ASSOCIATE-RQ PDU, with the
#: A-ASSOCIATE-RJ reason naming it (PS3.8 Table 9-21, source 1).
_TITLES = (("called", 10, 26, 7), ("calling", 26, 42, 3))
_ASSOCIATE_RQ = 0x01


def title_problem(raw: bytes) -> str | None:
    """Why the 16 bytes ``raw`` are not a usable AE title, or None if they are."""
    title = raw.strip(b" ")
    if not title:
        return "is empty (spaces only)"
    bad = sorted({b for b in title if not 0x20 <= b <= 0x7E})
    if bad:
        shown = " ".join(f"0x{b:02X}" for b in bad)
        return f"holds {shown}, outside the DICOM default character repertoire"
    if b"\\" in title:
        return "holds a backslash, which an AE title may not"
    return None


def pad_with_spaces(pdu: bytearray) -> list[str]:
    """Turn the NUL padding of an A-ASSOCIATE-RQ's AE titles into spaces, in place.

    Only padding: a title with something other than NULs and spaces after its first NUL
    is left for :func:`rejection`. Returns which titles ("called", "calling") changed.
    """
    changed: list[str] = []
    if len(pdu) < 42 or pdu[0] != _ASSOCIATE_RQ:
        return changed
    for which, start, end, _ in _TITLES:
        head, nul, tail = bytes(pdu[start:end]).partition(b"\x00")
        if nul and head.strip(b" ") and not tail.strip(b"\x00 "):
            pdu[start:end] = head.ljust(end - start)
            changed.append(which)
    return changed


def rejection(pdu: bytes) -> tuple[str, int, str] | None:
    """(which title, A-ASSOCIATE-RJ reason, problem) for an A-ASSOCIATE-RQ ``pdu`` with
    an unusable AE title, or None."""
    if len(pdu) < 42 or pdu[0] != _ASSOCIATE_RQ:
        return None
    for which, start, end, reason in _TITLES:
        problem = title_problem(pdu[start:end])
        if problem is not None:
            return which, reason, problem
    return None


def reject_pdu(reason: int) -> bytes:
    """A-ASSOCIATE-RJ: rejected-permanent, by the DICOM UL service-user, ``reason``."""
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 1, 1, reason)


def screen_ae_titles(assoc: Any, peer: str) -> None:
    """Refuse an A-ASSOCIATE-RQ of ``assoc`` with an unusable AE title before pynetdicom
    decodes it (see the module doc). Wraps this association's ``dul._decode_pdu`` for its
    first PDU only (the request: every later PDU goes to pynetdicom untouched)."""
    dul = assoc.dul
    original = dul._decode_pdu

    def decode_pdu(bytestream: bytearray) -> Any:
        dul._decode_pdu = original
        for which in pad_with_spaces(bytestream):
            log.debug("%s AE title from %s padded with NUL bytes: read as spaces", which, peer)
        refused = rejection(bytes(bytestream[:42]))
        if refused is None:
            return original(bytestream)
        which, reason, problem = refused
        start = 10 if which == "called" else 26
        log.warning(
            "association request from %s refused: %s AE title %r %s (PS3.5: 1-16 printable "
            "ASCII characters, no backslash): A-ASSOCIATE-RJ, %s AE title not recognized",
            peer,
            which,
            bytes(bytestream[start : start + 16]).strip(b" "),
            problem,
            which,
        )
        send_and_shut(getattr(dul.socket, "socket", None), reject_pdu(reason))
        # Evt17 (transport connection closed): Sta2 -> Sta1 without a request, which
        # ends the association thread (see guard.free_slot_when_closed).
        return None, "Evt17"

    dul._decode_pdu = decode_pdu
