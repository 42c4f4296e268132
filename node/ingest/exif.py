"""EXIF -> DICOM: the few camera values worth keeping, read with Pillow's EXIF parser.

Mapped: DateTimeOriginal (+ SubSecTimeOriginal, OffsetTimeOriginal) -> AcquisitionDateTime,
ContentDate/ContentTime (and StudyDate/StudyTime when nobody supplied them); Make ->
Manufacturer; Model -> ManufacturerModelName; Orientation is reported so the converter can
apply it. Everything else (GPS, serial numbers, maker notes, thumbnails) is dropped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from PIL import Image

log = logging.getLogger(__name__)

_EXIF_IFD = 0x8769
_MAKE, _MODEL, _ORIENTATION = 0x010F, 0x0110, 0x0112
_DATETIME_ORIGINAL, _OFFSET_ORIGINAL, _SUBSEC_ORIGINAL = 0x9003, 0x9011, 0x9291
_DT_RE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET_RE = re.compile(r"^([+-])(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class ExifValues:
    """Camera values from EXIF, already in DICOM form (DA, TM, DT strings)."""

    make: str = ""
    model: str = ""
    orientation: int = 1
    date: str = ""  # DA
    time: str = ""  # TM
    datetime: str = ""  # DT
    problem: str = ""  # why EXIF could not be read, if it could not


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    return str(value).replace("\x00", "").strip() if value is not None else ""


def read_exif(raw: bytes | None) -> ExifValues:
    """Parse a TIFF-structured EXIF block (the APP1 payload after ``Exif\\0\\0``)."""
    if not raw:
        return ExifValues()
    exif = Image.Exif()
    try:
        exif.load(b"Exif\x00\x00" + raw if not raw.startswith(b"Exif") else raw)
        sub = exif.get_ifd(_EXIF_IFD)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, IndexError) as exc:
        return ExifValues(problem=f"EXIF block unreadable ({exc}); no camera values taken")
    return exif_values(dict(exif), dict(sub))


def exif_values(ifd0: dict[int, object], sub: dict[int, object]) -> ExifValues:
    """Map IFD0 and the EXIF sub-IFD (tag number -> value) to :class:`ExifValues`."""
    orientation = ifd0.get(_ORIENTATION, 1)
    try:
        orientation = int(orientation)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        orientation = 1
    date = time = dt = ""
    m = _DT_RE.match(_text(sub.get(_DATETIME_ORIGINAL)))
    if m and m.group(1) != "0000":
        y, mo, d, hh, mm, ss = m.groups()
        date, time = f"{y}{mo}{d}", f"{hh}{mm}{ss}"
        frac = re.sub(r"\D", "", _text(sub.get(_SUBSEC_ORIGINAL)))[:6]
        if frac:
            time += f".{frac}"
        dt = date + time
        off = _OFFSET_RE.match(_text(sub.get(_OFFSET_ORIGINAL)))
        if off:
            dt += f"{off.group(1)}{off.group(2)}{off.group(3)}"
    return ExifValues(
        make=_text(ifd0.get(_MAKE))[:64],
        model=_text(ifd0.get(_MODEL))[:64],
        orientation=orientation if 1 <= orientation <= 8 else 1,
        date=date,
        time=time,
        datetime=dt,
    )
