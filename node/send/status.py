"""What happened to one file: DIMSE statuses and network failures as an :class:`Outcome`.

Every C-STORE response is classified (PS3.4 B.2.3, PS3.7 Annex C); nothing counts as sent
unless the peer said so::

    0x0000                        DELIVERED
    0xB000 0xB006 0xB007 (0xBxxx) DELIVERED, the warning is recorded
    0x0107 0x0116                 DELIVERED, recorded as a warning (PS3.7 C.4.2 general warnings)
    0x0111 duplicate SOP instance DELIVERED (the peer has it), recorded as a warning
    0xA7xx, 0x0213, 0xFE00        RETRY  (out of resources, resource limitation, cancel)
    0xA9xx, 0xCxxx, 0x01xx/0x02xx DEAD   (data set does not match, cannot understand, ...)
    no response, abort, timeout,
    connection refused,
    association rejected-transient RETRY
    rejected-permanent,
    context not accepted          DEAD

An unknown failure status is DEAD: it needs a human, and retrying it for a week would only
hide it. Outcomes are plain data so the retry logic can be tested without sockets.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    """What the worker does with a job after an attempt."""

    DELIVERED = "delivered"  # the peer stored it (possibly with a warning)
    RETRY = "retry"  # transient: try again later
    DEAD = "dead"  # permanent: give up, keep the reason visible


#: Named C-STORE statuses (PS3.4 B.2.3, PS3.7 C.4) for messages.
STATUS_NAMES: dict[int, str] = {
    0x0000: "Success",
    0xB000: "Warning: coercion of data elements",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
    0x0105: "No such attribute",
    0x0106: "Invalid attribute value",
    0x0107: "Warning: attribute list error",
    0x0110: "Processing failure",
    0x0111: "Duplicate SOP instance",
    0x0116: "Warning: attribute value out of range",
    0x0117: "Invalid object instance",
    0x0122: "SOP class not supported",
    0x0124: "Not authorised",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognised operation",
    0x0212: "Mistyped argument",
    0x0213: "Resource limitation",
    0xFE00: "Cancel",
}

_TRANSIENT_STATUSES = {0x0213, 0xFE00}
#: Warnings outside the 0xBxxx class (PS3.7 C.4.2): the object was stored. DCMTK's
#: DICOM_WARNING_STATUS and pynetdicom classify them as warnings too.
_GENERAL_WARNINGS = {0x0107, 0x0116}
DUPLICATE_SOP_INSTANCE = 0x0111


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt to deliver one file."""

    verdict: Verdict
    reason: str = ""
    status: int | None = None  # the peer's DIMSE status, when there was a response
    comment: str = ""  # the peer's (0000,0902) Error Comment, when it sent one

    @property
    def delivered(self) -> bool:
        return self.verdict is Verdict.DELIVERED

    @property
    def warning(self) -> bool:
        """Delivered, but the peer returned a warning status (kept in the job's last_error)."""
        return self.delivered and self.status not in (None, 0x0000)

    def describe(self) -> str:
        """One human line: ``delivered``, ``retry: ...``, ``dead: ...``."""
        if self.delivered and not self.warning:
            return "delivered"
        return f"{self.verdict}: {self.reason}" if self.reason else str(self.verdict)


def status_text(status: int, comment: str = "") -> str:
    """``0xA700 (Out of resources) "disk full"``: the peer's status, named, with its comment."""
    if status in STATUS_NAMES:
        name = STATUS_NAMES[status]
    elif status & 0xFF00 == 0xA700:
        name = "Out of resources"
    elif status & 0xFF00 == 0xA900:
        name = "Data set does not match SOP class"
    elif status & 0xF000 == 0xC000:
        name = "Cannot understand"
    elif status & 0xF000 == 0xB000:
        name = "Warning"
    else:
        name = "unknown status"
    text = f"0x{status:04X} ({name})"
    return f'{text} "{comment}"' if comment else text


def classify_status(status: int, comment: str = "") -> Outcome:
    """Classify the (0000,0900) Status of a C-STORE response."""
    text = status_text(status, comment)
    if status == 0x0000:
        return Outcome(Verdict.DELIVERED, "", status, comment)
    if status & 0xF000 == 0xB000 or status in _GENERAL_WARNINGS:
        return Outcome(Verdict.DELIVERED, f"peer warning {text}", status, comment)
    if status == DUPLICATE_SOP_INSTANCE:
        # The peer already holds this SOP Instance UID (ours are deterministic: a re-send
        # after a crash, or a re-dropped file). It is stored there, so it is not a failure
        # to retry or to leave dead for ever; the status stays recorded as a warning.
        return Outcome(
            Verdict.DELIVERED, f"peer already holds this instance: {text}", status, comment
        )
    if status & 0xFF00 == 0xA700 or status in _TRANSIENT_STATUSES:
        return Outcome(Verdict.RETRY, f"peer status {text}", status, comment)
    # 0xA9xx, 0xCxxx, the general 0x01xx/0x02xx failures and anything unknown.
    return Outcome(Verdict.DEAD, f"peer status {text}", status, comment)


def retry(reason: str) -> Outcome:
    """A transient failure without a DIMSE status (refused, timeout, abort ...)."""
    return Outcome(Verdict.RETRY, reason)


def dead(reason: str) -> Outcome:
    """A permanent failure without a DIMSE status (file unreadable, SOP class refused ...)."""
    return Outcome(Verdict.DEAD, reason)


#: errno values of a file system that is there but not answering (a network share down, a
#: stale NFS handle, an unplugged disk): the file may well be readable again later.
_UNREACHABLE = frozenset(
    getattr(errno, name)
    for name in ("EIO", "ESTALE", "ENOTCONN", "EHOSTDOWN", "EHOSTUNREACH", "ETIMEDOUT", "ENODEV")
    if hasattr(errno, name)
)


def file_unavailable(path: Path, exc: OSError | None = None) -> Outcome:
    """The file to send cannot be opened (``exc``, or found missing when ``exc`` is None).

    Gone from a folder that is still there: moved or deleted, DEAD (nothing to send; enqueue
    it again if it comes back). Its folder gone too, or an error of a file system that is not
    answering (a share or mount briefly away): RETRY, with the queue's backoff and limits.
    """
    errno_ = exc.errno if exc is not None else errno.ENOENT
    if errno_ in _UNREACHABLE:
        return retry(f"{path}: cannot read ({exc}): file system not answering, will retry")
    if errno_ == errno.ENOENT:
        try:
            folder_there = path.parent.is_dir()
        except OSError:
            folder_there = False
        if not folder_there:
            return retry(
                f"{path}: its folder {path.parent} is not there (a share or mount away?); "
                "will retry"
            )
        return dead(f"{path}: file is gone (moved or deleted before delivery)")
    return dead(f"{path}: cannot read: {exc.strerror if exc is not None else ''}")


DELIVERED = Outcome(Verdict.DELIVERED, "", 0x0000)
