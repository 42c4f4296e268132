"""Names that are never inputs, in the drop folder and for ``dicom-node convert DIR`` alike.

Hidden files (``.DS_Store``, macOS ``._photo.jpg``, rsync's ``.name.XXXXXX``), files still
being written by the tools that write them and renamed into place when complete (browsers'
downloads, WinSCP's and Safari's uploads, editors' swap files, ``~`` lock files) and the
files Windows Explorer leaves in every folder it shows (``Thumbs.db``, ``desktop.ini``). A
camera card or a Windows folder copied over holds them next to the photos: taking them as
inputs would refuse (or quarantine) each one as "not an image".

This module imports nothing heavy: the ``convert`` command's start-up uses it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

#: Names of files still being written by the tools that write them (browsers' downloads,
#: WinSCP's and Safari's uploads/downloads, editors), renamed into place when complete;
#: and the drop folder's own reason files beside quarantined inputs.
IGNORED_SUFFIXES = (
    ".part",
    ".tmp",
    ".crdownload",
    ".error.txt",
    ".partial",
    ".swp",
    ".filepart",  # WinSCP (SFTP/SCP uploads), the usual way onto a Linux drop folder
    ".download",  # Safari
    ".opdownload",  # Opera
)
#: Files Windows Explorer leaves in folders it shows (thumbnail caches, folder settings).
IGNORED_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini"})


def is_ignored(name: str) -> bool:
    """True for names that are never inputs (hidden, temporary, partial downloads, Windows
    folder files), compared without regard to case (``THUMBS.DB``, ``photo.JPG.PART``)."""
    lower = name.lower()
    return name.startswith((".", "~")) or lower.endswith(IGNORED_SUFFIXES) or lower in IGNORED_NAMES
