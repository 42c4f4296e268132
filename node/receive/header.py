"""Read the few elements the SCP needs from an encoded dataset, without decoding it.

The C-STORE handler must not decode the whole object (that is what stalls a modality), but
it needs the Study/Series/SOP Instance UIDs to build the archive path, the SOP Class UID to
check it against the command, the Modality for forward rules, and the Image Pixel
description to flag objects whose Pixel Data length contradicts it. pydicom walks the top
level of the dataset (values of elements we did not ask for are skipped, not converted)
and stops at (7FE0,0010) Pixel Data, whose header we then read ourselves: the pixel bytes
are never copied.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO

from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

log = logging.getLogger(__name__)

PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF

_WANTED = [
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x00080060,  # Modality
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00280002,  # SamplesPerPixel
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
]


class HeaderError(ValueError):
    """The dataset cannot be walked far enough to find its identifying elements."""


@dataclass(frozen=True)
class Header:
    """Identifying values of one received dataset (empty strings when absent)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    rows: int | None = None
    columns: int | None = None
    samples_per_pixel: int | None = None
    bits_allocated: int | None = None
    frames: int | None = None
    pixel_length: int | None = None  # None: no Pixel Data; -1: encapsulated (undefined length)
    flags: list[str] = field(default_factory=list)


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) >= PIXEL_DATA


def _text(ds: object, keyword: str) -> str:
    value = getattr(ds, keyword, "")
    return str(value).strip("\x00 ") if value is not None else ""


def _int(ds: object, keyword: str) -> int | None:
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _pixel_header(fp: BinaryIO, implicit: bool, little: bool) -> int | None:
    """Length of the Pixel Data element at ``fp`` (-1 if undefined), None if absent."""
    head = fp.read(8)
    if len(head) < 8:
        return None
    end = "<" if little else ">"
    group, elem = struct.unpack(end + "HH", head[:4])
    if (group << 16 | elem) != PIXEL_DATA:
        return None
    if implicit:
        (length,) = struct.unpack(end + "L", head[4:8])
    else:
        vr = head[4:6]
        if vr in (b"OB", b"OW", b"UN", b"OD", b"OF", b"OL", b"OV"):
            more = fp.read(4)
            if len(more) < 4:
                return None
            (length,) = struct.unpack(end + "L", more)
        else:
            (length,) = struct.unpack(end + "H", head[6:8])
    return -1 if length == _UNDEFINED else int(length)


def read_header(data: bytes | BinaryIO, implicit: bool, little: bool) -> Header:
    """The identifying elements of ``data`` (dataset bytes without file meta)."""
    fp: BinaryIO = BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        ds = read_dataset(
            fp,
            implicit,
            little,
            stop_when=_stop_at_pixels,
            specific_tags=list(_WANTED),
        )
        pixel_length = _pixel_header(fp, implicit, little)
        header = Header(
            sop_class_uid=_text(ds, "SOPClassUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            study_uid=_text(ds, "StudyInstanceUID"),
            series_uid=_text(ds, "SeriesInstanceUID"),
            modality=_text(ds, "Modality"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            samples_per_pixel=_int(ds, "SamplesPerPixel"),
            bits_allocated=_int(ds, "BitsAllocated"),
            frames=_int(ds, "NumberOfFrames"),
            pixel_length=pixel_length,
        )
    except HeaderError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise HeaderError(f"cannot parse the dataset header: {exc}") from exc
    header.flags.extend(pixel_flags(header))
    return header


def expected_pixel_bytes(h: Header) -> int | None:
    """Rows × Columns × Samples × BitsAllocated/8 × Frames, or None if undetermined."""
    if not (h.rows and h.columns and h.bits_allocated):
        return None
    samples = h.samples_per_pixel or 1
    frames = h.frames or 1
    bits = h.rows * h.columns * samples * frames * h.bits_allocated
    return (bits + 7) // 8


def pixel_flags(h: Header) -> list[str]:
    """Flags for the export stage: native Pixel Data whose length contradicts the header."""
    if h.pixel_length is None or h.pixel_length < 0:
        return []
    expected = expected_pixel_bytes(h)
    if expected is None:
        return ["pixel_description_missing"]
    # The value is padded to even length: one extra byte is legal.
    if h.pixel_length not in (expected, expected + (expected & 1)):
        return ["pixel_length_mismatch"]
    return []
