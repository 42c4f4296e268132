"""EXIF -> DICOM: the few camera values worth keeping, read by a small TIFF IFD parser.

Mapped: DateTimeOriginal (+ SubSecTimeOriginal, OffsetTimeOriginal) -> AcquisitionDateTime,
ContentDate/ContentTime (and StudyDate/StudyTime when nobody supplied them); Make ->
Manufacturer; Model -> ManufacturerModelName; Orientation is reported so the converter can
apply it. Only IFD0 and the EXIF sub-IFD are read (Pillow's full parser costs ~10x more);
everything else (GPS, serial numbers, maker notes, thumbnails) is dropped.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass

from node.ingest.values import date_time_problem

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


def _decode(raw: bytes) -> str:
    """EXIF "ASCII" as cameras really write it: UTF-8, else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = _decode(value)
    return str(value).replace("\x00", "").strip() if value is not None else ""


#: What an LO value may not hold (dciodvfy): control characters, and the backslash, which
#: would split the value in two.
_NOT_IN_LO = re.compile(r"[\x00-\x1f\x7f\\]+")


def _lo(value: object) -> str:
    """EXIF text as a valid LO value: control characters and backslashes become spaces,
    and it is cut to the 64 bytes (UTF-8) that dciodvfy allows."""
    text = " ".join(_NOT_IN_LO.sub(" ", _text(value)).split())
    return text.encode("utf-8")[:64].decode("utf-8", "ignore").rstrip()


def read_exif(raw: bytes | None) -> ExifValues:
    """Parse a TIFF-structured EXIF block (the APP1 payload after ``Exif\\0\\0``).

    Only IFD0 and the EXIF sub-IFD are read, and only the tags we map; a damaged block
    yields ``problem`` and no values (never an exception).
    """
    if not raw:
        return ExifValues()
    if raw.startswith(b"Exif\x00\x00"):
        raw = raw[6:]
    try:
        ifd0, sub = _parse_tiff(raw)
    except (struct.error, ValueError, IndexError) as exc:
        return ExifValues(problem=f"EXIF block unreadable ({exc}); no camera values taken")
    return exif_values(ifd0, sub)


_WANTED_IFD0 = {_MAKE, _MODEL, _ORIENTATION, _EXIF_IFD}
_WANTED_SUB = {_DATETIME_ORIGINAL, _OFFSET_ORIGINAL, _SUBSEC_ORIGINAL}


def _parse_tiff(raw: bytes) -> tuple[dict[int, object], dict[int, object]]:
    if raw[:2] == b"II":
        end = "<"
    elif raw[:2] == b"MM":
        end = ">"
    else:
        raise ValueError("no TIFF byte-order mark")
    (magic, offset) = struct.unpack_from(end + "HI", raw, 2)
    if magic != 42:
        raise ValueError("bad TIFF magic number")
    ifd0 = _read_ifd(raw, offset, end, _WANTED_IFD0)
    sub: dict[int, object] = {}
    pointer = ifd0.get(_EXIF_IFD)
    if isinstance(pointer, int) and 0 < pointer < len(raw):
        sub = _read_ifd(raw, pointer, end, _WANTED_SUB)
    return ifd0, sub


def _read_ifd(raw: bytes, offset: int, end: str, wanted: set[int]) -> dict[int, object]:
    """Entries of one IFD with types ASCII (2), SHORT (3) or LONG (4), count 1 for numbers."""
    out: dict[int, object] = {}
    (count,) = struct.unpack_from(end + "H", raw, offset)
    for i in range(min(count, 512)):
        tag, typ, n, value = struct.unpack_from(end + "HHI4s", raw, offset + 2 + 12 * i)
        if tag not in wanted:
            continue
        if typ == 2:
            data = value[:n] if n <= 4 else raw[_u32(value, end) : _u32(value, end) + n]
            if n > 4 and len(data) != n:
                raise ValueError(f"EXIF tag 0x{tag:04X} points outside the block")
            out[tag] = _decode(data.split(b"\x00", 1)[0])
        elif typ == 3:
            out[tag] = struct.unpack_from(end + "H", value)[0]
        elif typ == 4:
            out[tag] = _u32(value, end)
    return out


def _u32(value: bytes, end: str) -> int:
    return int(struct.unpack_from(end + "I", value)[0])


def exif_values(ifd0: dict[int, object], sub: dict[int, object]) -> ExifValues:
    """Map IFD0 and the EXIF sub-IFD (tag number -> value) to :class:`ExifValues`."""
    orientation = ifd0.get(_ORIENTATION, 1)
    try:
        orientation = int(orientation)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        orientation = 1
    date = time = dt = ""
    m = _DT_RE.match(_text(sub.get(_DATETIME_ORIGINAL)))
    # "2024:13:45 25:61:61" is no date: DA/TM/DT made of it would be invalid (dciodvfy).
    if m and _plausible(*m.groups()):
        y, mo, d, hh, mm, ss = m.groups()
        date, time = f"{y}{mo}{d}", f"{hh}{mm}{ss}"
        frac = re.sub(r"\D", "", _text(sub.get(_SUBSEC_ORIGINAL)))[:6]
        if frac:
            time += f".{frac}"
        dt = date + time
        off = _OFFSET_RE.match(_text(sub.get(_OFFSET_ORIGINAL)))
        if off and date_time_problem("DT", dt + "".join(off.groups())) is None:
            dt += "".join(off.groups())
    return ExifValues(
        make=_lo(ifd0.get(_MAKE)),
        model=_lo(ifd0.get(_MODEL)),
        orientation=orientation if 1 <= orientation <= 8 else 1,
        date=date,
        time=time,
        datetime=dt,
    )


def _plausible(year: str, month: str, day: str, hour: str, minute: str, second: str) -> bool:
    """A calendar date and clock time DICOM's DA and TM accept, and dciodvfy too (years
    1000-2999, no second 60; year 0000 is a camera's "unset")."""
    if int(hour) > 23 or int(minute) > 59:
        return False
    return date_time_problem("DT", year + month + day + hour + minute + second) is None
