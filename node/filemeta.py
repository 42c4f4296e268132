"""Read a DICOM file's File Meta Information (PS3.10 7.1) without decoding the file.

Sending a file needs three values from its meta header, (0002,0002)
MediaStorageSOPClassUID, (0002,0003) MediaStorageSOPInstanceUID and (0002,0010)
TransferSyntaxUID, and the offset where the data set begins (the bytes after it go on the
wire as they are). pydicom's ``read_file_meta_info`` builds a Dataset for that (~0.3 ms a
file, more than the C-STORE of a small object on loopback), and the SCU used to read the
meta twice per file (planning, then the offset).

:func:`read_file_meta` reads the 128-byte preamble, ``DICM`` and the group 0002 elements,
Explicit VR Little Endian as PS3.10 requires, stepping over values it does not need, in
one ``open`` and usually one 4 KiB read. A meta header written with implicit VR by a
non-conformant tool, or with a non-ASCII UID, goes to pydicom's reader, imported only
then; a cut-off or damaged one is refused with the element it ends in. Tests compare the
walker with pydicom on pydicom's test files.

A file without preamble and meta header that starts with a group 0008 element is a bare
data set (``dcmconv -F`` writes them, and old archives and some modalities' exports hold
them); DCMTK's ``storescu`` sends them, and so do we: its syntax is Implicit or Explicit VR
Little Endian (told apart by whether a VR follows the first tag, as DCMTK and pydicom do),
its UIDs are the data set's (0008,0016) SOPClassUID and (0008,0018) SOPInstanceUID, and it
starts at byte 0.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PREAMBLE = 128
MAGIC = b"DICM"
MAX_META_BYTES = 1 << 20  # a meta header longer than 1 MiB is not a meta header

_TAG_VR = struct.Struct("<HH2s")
_SHORT_LEN = struct.Struct("<H")
_LONG_LEN = struct.Struct("<I")
# VRs with 2 reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_WANTED = {
    0x0002: "sop_class_uid",
    0x0003: "sop_instance_uid",
    0x0010: "transfer_syntax",
}
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: (0002,0002) of a DICOMDIR: the index of a medium, not an object to convert or send.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: Every VR of PS3.5 6.2: two of these after the first tag mean explicit VR.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
_KEYWORDS = {
    "sop_class_uid": ("(0002,0002)", "MediaStorageSOPClassUID"),
    "sop_instance_uid": ("(0002,0003)", "MediaStorageSOPInstanceUID"),
    "transfer_syntax": ("(0002,0010)", "TransferSyntaxUID"),
}


class FileMetaError(ValueError):
    """The file is not DICOM Part 10, or its meta header is damaged or incomplete."""


@dataclass(frozen=True)
class FileMeta:
    """What a sender needs from a Part 10 file; ``data_offset`` is where the data set starts."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data_offset: int

    def as_dict(self) -> dict[str, str]:
        """The three UIDs (the payload of a delivery job)."""
        return {
            "sop_class_uid": self.sop_class_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "transfer_syntax": self.transfer_syntax,
        }


class NotDicom(FileMetaError):
    """No ``DICM`` prefix and not a bare data set: a file of another kind (a CD's viewer,
    its ``AUTORUN.INF``), or one damaged beyond recognition."""


class _Unusual(Exception):
    """Not a conformant Explicit VR Little Endian meta header: ask pydicom."""


def read_file_meta(path: Path) -> FileMeta:
    """The meta header of ``path``; FileMetaError names the file and what is wrong.

    OSError (missing file, permissions) propagates unchanged.
    """
    with open(path, "rb") as fp:
        return read_file_meta_from(fp, path)


def read_file_meta_from(fp: BinaryIO, path: Path) -> FileMeta:
    """:func:`read_file_meta` on a file open for binary reading at its start.

    The file position afterwards is unspecified (seek to ``data_offset`` to read the data
    set); ``path`` names the file in errors (and is read again by pydicom if needed).
    """
    head = fp.read(4096)
    if len(head) < PREAMBLE + 4 or head[PREAMBLE : PREAMBLE + 4] != MAGIC:
        if len(head) >= 8 and _TAG_VR.unpack_from(head)[0] == 0x0008:
            return _bare_data_set(head, path)
        raise NotDicom(f"{path}: not a DICOM file (no DICM prefix after the preamble)")
    try:
        values, offset = _walk(fp, head, path)
    except _Unusual:
        values, offset = _read_with_pydicom(path)
    missing = [key for key in _KEYWORDS if not values.get(key)]
    if missing:
        tag, keyword = _KEYWORDS[missing[0]]
        raise FileMetaError(
            f"{path}: {tag} {keyword} is missing from the file meta information; "
            "rewrite the file with a complete meta header (e.g. dcmconv or pydicom "
            "save_as(enforce_file_format=True))"
        )
    return FileMeta(
        values["sop_class_uid"], values["sop_instance_uid"], values["transfer_syntax"], offset
    )


def _walk(fp: BinaryIO, head: bytes, path: Path) -> tuple[dict[str, str], int]:
    """Step over the group 0002 elements; ``(wanted values, offset after the group)``."""
    buf = bytearray(head)
    pos = PREAMBLE + 4
    values: dict[str, str] = {}

    def need(end: int) -> bool:
        """Make ``buf`` hold bytes up to ``end``; False at the end of the file."""
        if end > MAX_META_BYTES:
            raise FileMetaError(
                f"{path}: the file meta information claims more than {MAX_META_BYTES} bytes; "
                "the file is damaged"
            )
        if end > len(buf):
            buf.extend(fp.read(max(end - len(buf), 4096)))
        return end <= len(buf)

    while need(pos + 8):
        group, element, vr = _TAG_VR.unpack_from(buf, pos)
        if group != 0x0002:
            break
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise _Unusual  # implicit VR meta (non-conformant)
        if vr in _LONG_VRS:
            if not need(pos + 12):
                raise FileMetaError(f"{path}: the file ends inside the file meta information")
            (length,) = _LONG_LEN.unpack_from(buf, pos + 8)
            start = pos + 12
        else:
            (length,) = _SHORT_LEN.unpack_from(buf, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF:
            raise FileMetaError(
                f"{path}: ({group:04X},{element:04X}) in the file meta information has an "
                "undefined length (PS3.10 7.1 forbids it); the file is damaged"
            )
        if not need(start + length):
            raise FileMetaError(
                f"{path}: the file ends inside ({group:04X},{element:04X}) of the file meta "
                "information; copy the file again from its source"
            )
        key = _WANTED.get(element)
        if key is not None:
            try:
                values[key] = bytes(buf[start : start + length]).decode("ascii").strip("\0").strip()
            except UnicodeDecodeError:
                raise _Unusual from None
        pos = start + length
    else:
        if pos != len(buf):
            raise FileMetaError(f"{path}: the file ends inside the file meta information")
    return values, pos


def _read_with_pydicom(path: Path) -> tuple[dict[str, str], int]:
    from pynetdicom.dsutils import split_dataset

    try:
        meta, offset = split_dataset(path)
        values = {
            key: str(meta.get(keyword, "") or "").strip()
            for key, (_tag, keyword) in _KEYWORDS.items()
        }
    except Exception as exc:  # pydicom raises several types on damaged headers
        raise FileMetaError(f"{path}: damaged file meta information: {exc}") from None
    log.debug("%s: meta header read by pydicom (not Explicit VR Little Endian)", path)
    return values, int(offset)


def _bare_data_set(head: bytes, path: Path) -> FileMeta:
    """A data set without preamble and meta header (see the module docstring)."""
    from pydicom import dcmread
    from pydicom.uid import UID

    ts = EXPLICIT_VR_LITTLE_ENDIAN if head[4:6] in _VRS else IMPLICIT_VR_LITTLE_ENDIAN
    try:
        ds = dcmread(
            path, force=True, stop_before_pixels=True, specific_tags=[0x00080016, 0x00080018]
        )
        values = {
            "sop_class_uid": str(ds.get("SOPClassUID", "") or "").strip("\0 "),
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or "").strip("\0 "),
        }
    except Exception as exc:  # pydicom raises several types on damaged data
        raise FileMetaError(
            f"{path}: no file meta information, and not readable as a bare data set: {exc}"
        ) from None
    for key, tag, keyword in (
        ("sop_class_uid", "(0008,0016)", "SOPClassUID"),
        ("sop_instance_uid", "(0008,0018)", "SOPInstanceUID"),
    ):
        if not UID(values[key]).is_valid:
            raise FileMetaError(
                f"{path}: a data set without file meta information, and its {tag} {keyword} "
                f"is missing or not a valid UID ({values[key]!r}); fix the data set"
            )
    log.debug("%s: a bare data set (no meta header), %s", path, ts)
    return FileMeta(values["sop_class_uid"], values["sop_instance_uid"], ts, 0)
