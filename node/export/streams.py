"""Checks of one compressed frame against the object before it is decoded.

Decoders are lenient where a wrong image would result, and when they do fail, they say
so in terms of array shapes ("could not broadcast input array from shape (3840,)"). Two
things are read from the code stream itself (marker segments only; nothing is decoded):

* the end: JPEG, JPEG-LS and JPEG 2000 streams end with FFD9 (EOI / EOC). FFD9 cannot
  occur inside scan data (JPEG byte stuffing, JPEG-LS bit stuffing, JPEG 2000 packet
  rules), so a stream whose last FFD9 comes before its last start of scan (FFDA) or of
  tile data (FF93) was cut short. pylibjpeg (libjpeg 9, which also reads JPEG-LS) fills
  the missing part of such a stream with grey or repeated rows without an error; DCMTK
  refuses these frames, and so do we.
* the geometry: the frame header (JPEG/JPEG-LS SOFn, JPEG 2000 SIZ) gives columns, rows
  and components, which must be (0028,0011) Columns, (0028,0010) Rows and (0028,0002)
  Samples per Pixel.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from node.errors import BadPixelData

log = logging.getLogger(__name__)

JPEG = tuple(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81))
JPEG_2000 = tuple(f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203))
#: Start of frame markers: SOF0..SOF15 without DHT (C4), JPG (C8), DAC (CC); F7 JPEG-LS.
_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}
#: Markers without a length field.
_STANDALONE = {0x01, *range(0xD0, 0xDA)}


def checked(transfer_syntax: str) -> bool:
    """Whether frames of ``transfer_syntax`` are checked here."""
    return transfer_syntax in JPEG or transfer_syntax in JPEG_2000


def _jpeg_geometry(data: bytes) -> tuple[int, int, int] | None:
    """(columns, rows, components) of the first SOFn/SOF55 segment, or None."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF and pos + 10 <= len(data):
            rows, cols = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return cols, rows, data[pos + 9]
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _j2k_geometry(data: bytes) -> tuple[int, int, int] | None:
    """(columns, rows, components) of the SIZ segment that follows SOC, or None."""
    start = data.find(b"\xff\x4f\xff\x51")
    if start < 0 or start + 42 > len(data):
        return None
    x, y, x0, y0 = struct.unpack(">IIII", data[start + 8 : start + 24])
    (components,) = struct.unpack(">H", data[start + 40 : start + 42])
    if x <= x0 or y <= y0:  # not a usable SIZ: the decoder will say what is wrong
        return None
    return x - x0, y - y0, components


def check_frame(
    data: bytes,
    transfer_syntax: str,
    name: str,
    description: tuple[int, int, int],
    frame: int,
    path: Path,
) -> None:
    """Raise BadPixelData if frame ``frame`` (1-based) is cut short or is not the image
    ``description`` = (columns, rows, samples) says; ``name`` is the transfer syntax's."""
    data = data.rstrip(b"\x00")  # even-length padding
    scan = max(data.rfind(b"\xff\xda"), data.rfind(b"\xff\x93"))
    where = f"{path}: (7FE0,0010) PixelData frame {frame}: the {name} stream ({len(data)} bytes)"
    if data.rfind(b"\xff\xd9") < scan:
        raise BadPixelData(
            f"{where} has no end marker (FFD9) after its last scan: the compressed data is "
            "truncated"
        )
    if transfer_syntax in JPEG:
        geometry = _jpeg_geometry(data) if data.startswith(b"\xff\xd8") else None
    else:
        geometry = _j2k_geometry(data)
    if geometry is None:
        log.debug("%s: no frame header found; left to the decoder", where)
        return
    cols, rows, components = geometry
    want_cols, want_rows, samples = description
    if rows == 0 and transfer_syntax in JPEG:
        rows = want_rows  # the height comes later, in a DNL segment
    if (cols, rows, components) != (want_cols, want_rows, samples):
        raise BadPixelData(
            f"{where} holds {cols} x {rows} pixels with {components} component(s), but "
            f"(0028,0011) Columns {want_cols} x (0028,0010) Rows {want_rows} with "
            f"(0028,0002) SamplesPerPixel {samples}: the description does not match the data"
        )
