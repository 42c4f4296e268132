"""File names derived from input names that still fit the file system.

A dropped file may have a name of up to 255 bytes (NAME_MAX on Linux file systems); the
names the node derives from it (``NAME.dcm`` in outgoing/, ``NAME.error.txt`` beside a
quarantined input, ``.NAME.copying`` during a cross-device claim) are longer and would
fail with ENAMETOOLONG, leaving the input stuck instead of converted or quarantined.
:func:`fit_name` shortens such a name, keeping its start and extension readable and adding
a digest of the full name so that two long names never collide.
"""

from __future__ import annotations

import hashlib
import logging

log = logging.getLogger(__name__)

#: The longest file name (in bytes) Linux file systems accept.
NAME_MAX = 255


def fit_name(name: str, suffix: str = "") -> str:
    """``name + suffix`` if it fits NAME_MAX bytes, else ``name`` cut short (on a character
    boundary, its extension kept) plus ``-<12 hex digits of its SHA-256>``, then ``suffix``."""
    if len((name + suffix).encode("utf-8", "surrogateescape")) <= NAME_MAX:
        return name + suffix
    digest = "-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem, dot, ext = name.rpartition(".")
    ext = dot + ext if stem and len(ext) <= 16 else ""
    stem = name[: len(name) - len(ext)] if ext else name
    room = NAME_MAX - len((digest + ext + suffix).encode("utf-8", "surrogateescape"))
    cut = stem.encode("utf-8", "surrogateescape")[: max(room, 0)]
    short = cut.decode("utf-8", "ignore")
    log.debug("name %r shortened to %r", name, short + digest + ext + suffix)
    return short + digest + ext + suffix
