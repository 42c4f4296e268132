"""DICOM files dropped into the inbox: validated and queued as they are, never converted.

A dropped folder holding a ``DICOMDIR`` (a file-set copied from a patient CD) is resolved
through its directory records; every Referenced File ID must name a file inside the
dropped folder (CD copies often change the case of names, so the match is
case-insensitive), never anything outside it.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from node.errors import ConversionError
from node.filemeta import MEDIA_STORAGE_DIRECTORY, read_file_meta
from node.fsutil import is_valid_uid
from node.ingest.watcher import input_files

log = logging.getLogger(__name__)

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = Tag(0x7FE0, 0x0010)
#: Values larger than this are skipped (not read) while checking that a file is complete.
DEFER_BYTES = 4096


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


def check_complete(path: Path) -> None:
    """Refuse a truncated file: every element's value must lie inside the file.

    pydicom reads a cut-off file without complaint (the last element short, the rest
    missing), and the SCU sends the bytes on disk as they are: a file copied from a CD or
    a share that broke off half-way would reach the PACS damaged. Values are not read
    (only their lengths are checked; encapsulated pixel data is walked fragment by
    fragment), so this costs one pass over the element and item headers.
    """
    size = path.stat().st_size
    try:
        meta = read_file_meta(path)  # a bare data set (no meta header) starts at byte 0
        offset, ts = meta.data_offset, UID(meta.transfer_syntax)
        if not ts.is_transfer_syntax or ts.is_deflated:
            return  # unknown syntax: refused elsewhere; deflated: the stream is checked by zlib
        with open(path, "rb") as fp:
            end = _walk(path.name, fp, offset, size, ts)
            fp.seek(end)
            rest = fp.read(DEFER_BYTES)  # pydicom stops silently before a cut-off header
            if end < size and rest.strip(b"\0"):
                raise DicomInputError(
                    f"{path.name}: truncated: {size - end} byte(s) after the last complete "
                    "element are the start of a cut-off one; copy the file again from its source"
                )
    except DicomInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise DicomInputError(
            f"{path.name}: damaged or truncated DICOM file ({type(exc).__name__}: {exc}); "
            "copy the file again from its source"
        ) from None


def _truncated(name: str, what: str, needed: int, size: int) -> DicomInputError:
    return DicomInputError(
        f"{name}: truncated: {what} needs {needed} bytes, the file has {size}; copy the "
        "file again from its source"
    )


def _walk(name: str, fp: BinaryIO, offset: int, size: int, ts: UID) -> int:
    """Check the top-level elements from ``offset``; return where the last one ends."""
    end = offset

    def encapsulated(tag: BaseTag, vr: str | None, length: int) -> bool:
        return tag == PIXEL_DATA and length == UNDEFINED_LENGTH

    while True:
        fp.seek(end)
        elements = data_element_generator(
            fp,
            ts.is_implicit_VR,
            ts.is_little_endian,
            defer_size=DEFER_BYTES,
            stop_when=encapsulated,
        )
        for elem in elements:
            end = fp.tell()  # the generator has read (or skipped) this element's value
            if not isinstance(elem, RawDataElement):
                continue  # a sequence: pydicom has read its items
            length = elem.length
            if length != UNDEFINED_LENGTH and elem.value_tell + length > size:
                raise _truncated(name, f"element {elem.tag}", elem.value_tell + length, size)
        fp.seek(end)
        header = fp.read(8)
        if len(header) < 8 or Tag(*struct.unpack("<HH", header[:4])) != PIXEL_DATA:
            return end
        # Encapsulated pixel data (always little endian): items, then a sequence delimiter.
        if not ts.is_implicit_VR:
            header += fp.read(4)
        while True:
            item = fp.read(8)
            if len(item) < 8:
                raise _truncated(name, "(7FE0,0010) PixelData", fp.tell() + 8, size)
            group, elem_, length = struct.unpack("<HHL", item)
            if (group, elem_) == (0xFFFE, 0xE0DD):
                end = fp.tell()
                break
            if (group, elem_) != (0xFFFE, 0xE000):
                raise DicomInputError(
                    f"{name}: (7FE0,0010) PixelData: ({group:04X},{elem_:04X}) where an item "
                    "or the sequence delimiter should be; the file is damaged"
                )
            if fp.tell() + length > size:
                raise _truncated(name, "a (7FE0,0010) PixelData fragment", fp.tell() + length, size)
            fp.seek(length, 1)


def validate_dicom(path: Path) -> str:
    """Check a dropped DICOM file can be delivered as it is; return its SOP Instance UID."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DicomInputError(f"{path.name}: not a readable DICOM file: {exc}") from None
    check_complete(path)
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
