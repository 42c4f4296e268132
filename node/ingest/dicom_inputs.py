"""DICOM files dropped into the inbox: validated and queued as they are, never converted.

A dropped folder holding a ``DICOMDIR`` (a file-set copied from a patient CD) is resolved
through its directory records; every Referenced File ID must name a file inside the
dropped folder (CD copies often change the case of names, so the match is
case-insensitive), never anything outside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node.errors import ConversionError
from node.fsutil import is_valid_uid
from node.ingest.watcher import input_files

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


class DicomInputError(ConversionError):
    """A dropped DICOM file or file-set is not usable as it is."""


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def validate_dicom(path: Path) -> str:
    """Check a dropped DICOM file can be delivered as it is; return its SOP Instance UID."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DicomInputError(f"{path.name}: not a readable DICOM file: {exc}") from None
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", ""))
    if not is_valid_uid(ts):
        raise DicomInputError(
            f"{path.name}: (0002,0010) TransferSyntaxUID is missing or invalid ({ts!r}); "
            "re-export the file as DICOM Part 10"
        )
    for keyword, tag in (("SOPClassUID", "(0008,0016)"), ("SOPInstanceUID", "(0008,0018)")):
        value = str(ds.get(keyword, ""))
        if not is_valid_uid(value):
            raise DicomInputError(
                f"{path.name}: {tag} {keyword} is missing or not a valid UID ({value!r})"
            )
    if str(ds.SOPClassUID) == MEDIA_STORAGE_DIRECTORY:
        raise DicomInputError(f"{path.name}: a DICOMDIR is not an object to deliver")
    media_uid = str(meta.get("MediaStorageSOPInstanceUID", ds.SOPInstanceUID))
    if media_uid != str(ds.SOPInstanceUID):
        raise DicomInputError(
            f"{path.name}: (0002,0003) MediaStorageSOPInstanceUID {media_uid} differs from "
            f"(0008,0018) SOPInstanceUID {ds.SOPInstanceUID}; the file is inconsistent"
        )
    return str(ds.SOPInstanceUID)


def _resolve_case_insensitive(root: Path, parts: list[str]) -> Path | None:
    current = root
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part:
            return None
        exact = current / part
        if exact.exists():
            current = exact
            continue
        matches = [c for c in current.iterdir()] if current.is_dir() else []
        found = [c for c in matches if c.name.lower() == part.lower()]
        if not found:
            return None
        current = found[0]
    resolved = current.resolve()
    return resolved if resolved.is_relative_to(root.resolve()) else None


def dicomdir_files(folder: Path, dicomdir: Path) -> list[Path]:
    """The files a DICOMDIR references, each checked to lie inside ``folder``."""
    try:
        ds = pydicom.dcmread(dicomdir)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DicomInputError(f"{dicomdir.name}: unreadable DICOMDIR: {exc}") from None
    out: list[Path] = []
    for record in ds.get("DirectoryRecordSequence", []):
        ref = record.get("ReferencedFileID")
        if ref is None:
            continue
        parts = [
            str(p) for p in (ref if isinstance(ref, list | pydicom.multival.MultiValue) else [ref])
        ]
        resolved = _resolve_case_insensitive(folder, parts)
        if resolved is None:
            raise DicomInputError(
                f"{dicomdir.name}: (0004,1500) ReferencedFileID {'/'.join(parts)!r} does not "
                "name a file inside the dropped folder; the file-set is incomplete or unsafe"
            )
        out.append(resolved)
    return sorted(set(out))


def dicom_files_in(folder: Path) -> list[Path] | None:
    """The DICOM files of a dropped folder to send as they are, or None for an image folder.

    A DICOMDIR wins: only the files it references. Otherwise, a folder whose inputs are all
    DICOM files is taken as it is; any other folder is converted image by image.
    """
    for candidate in folder.iterdir():
        if candidate.is_file() and candidate.name.upper() == "DICOMDIR":
            return dicomdir_files(folder, candidate)
    files = input_files(folder)
    if files and all(is_dicom_file(p) for p in files):
        return files
    return None
