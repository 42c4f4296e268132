"""Two files given to ``dicom-node send`` under one SOP Instance UID: the same object or not.

A UID names one object (PS3.5 9.1). The same file met twice (a CD copied into two folders,
one file reached by two paths) is sent or queued once. Two files that differ under one UID
are a converter or export bug (a template's UID copied into every output) or a corrected
copy: the PACS would keep only one of them, so the second is refused, naming the first
and what differs. ``send`` and ``send --queue`` share these words.
"""

from __future__ import annotations

import filecmp
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def difference(first: Path, second: Path) -> str | None:
    """None when the two files hold the same bytes (or are one file), else what differs."""
    try:
        a, b = first.stat(), second.stat()
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return None
        if a.st_size != b.st_size:
            return f"{a.st_size} bytes there, {b.st_size} here"
        if filecmp.cmp(first, second, shallow=False):  # stops at the first difference
            return None
        return f"both {a.st_size} bytes, other content"
    except OSError as exc:
        return f"cannot compare them: {exc.strerror or exc}"


def conflict(uid: str, first: Path, how: str, why: str, *, queued_hint: bool = False) -> str:
    """The message for a second, different file under ``uid``; ``how`` says where the
    first one is (e.g. "queued for pacs as job 12 (retry)", "sent in this run");
    ``queued_hint``: the first one waits in the queue, where ``--replace`` can swap it."""
    if queued_hint:
        instead = "queue it again with --replace: the job then sends this file instead"
    else:
        instead = (
            "send it again once that one is done (a dicom-node PACS keeps the first copy "
            'unless its receive.duplicates is "overwrite")'
        )
    return (
        f"(0008,0018) SOPInstanceUID {uid} is already {how} for another file, "
        f"{first} ({why}): one UID must name one object, and the PACS would keep only "
        "one of them. Give one of them a new SOP Instance UID at the source (e.g. "
        f"`dcmodify -gin FILE` on a copy), or, if this file replaces the other, {instead}"
    )


def same_file(path: Path, other: Path) -> bool:
    """True when ``path`` and ``other`` name one file (compared as absolute paths)."""
    return os.path.abspath(path) == os.path.abspath(other)
