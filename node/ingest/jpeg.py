"""JPEG marker parser: what the stream really is, without decoding it.

``parse_jpeg`` walks the marker segments of a JPEG interchange file (ITU-T T.81 Annex B)
and reports the frame header (SOF type, precision, rows, columns, components with their
ids and sampling factors), the Adobe APP14 colour transform, JFIF (and its pixel density),
EXIF and ICC payloads,
restart interval, the scans, and where EOI is. Entropy-coded data is skipped with
``bytes.find``-style searches (a compiled regex over ``FF xx`` pairs that are neither byte
stuffing nor RSTn), so a 300 KB camera JPEG is parsed in well under a millisecond.

``strip_segments`` rebuilds the stream without the metadata segments that may carry
personal data (EXIF/XMP in APP1, IPTC in APP13, MPF, maker segments, COM) while keeping
every table, the frame header and the scan data byte-identical. JFIF (APP0), ICC (APP2
``ICC_PROFILE``) and Adobe (APP14) stay, since decoders need them to get colours right.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from node.errors import CorruptInput, UnsupportedInput

log = logging.getLogger(__name__)

SOI, EOI, SOS, DQT, DHT, DRI, DNL, COM = 0xD8, 0xD9, 0xDA, 0xDB, 0xC4, 0xDD, 0xDC, 0xFE
#: SOFn markers (not DHT C4, JPG C8, DAC CC) and their names.
SOF_NAMES = {
    0xC0: "baseline (SOF0)",
    0xC1: "extended sequential (SOF1)",
    0xC2: "progressive (SOF2)",
    0xC3: "lossless (SOF3)",
    0xC5: "differential sequential (SOF5)",
    0xC6: "differential progressive (SOF6)",
    0xC7: "differential lossless (SOF7)",
    0xC9: "extended sequential arithmetic (SOF9)",
    0xCA: "progressive arithmetic (SOF10)",
    0xCB: "lossless arithmetic (SOF11)",
    0xCD: "differential sequential arithmetic (SOF13)",
    0xCE: "differential progressive arithmetic (SOF14)",
    0xCF: "differential lossless arithmetic (SOF15)",
}
# A marker inside entropy-coded data: FF followed by anything but 00 (stuffing), RSTn or FF.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_RGB_IDS = (ord("R"), ord("G"), ord("B"))


@dataclass(frozen=True)
class Component:
    """One frame component: id, horizontal/vertical sampling factor, quantisation table."""

    ident: int
    h: int
    v: int
    tq: int


@dataclass(frozen=True)
class Segment:
    """A marker segment ``data[start:end]`` (marker bytes included)."""

    marker: int
    start: int
    end: int
    kept: bool = True  # survives strip_segments

    def payload(self, data: bytes) -> bytes:
        return data[self.start + 4 : self.end]


@dataclass
class JpegInfo:
    """What ``parse_jpeg`` found in a JPEG stream."""

    sof: int = 0
    precision: int = 0
    rows: int = 0
    columns: int = 0
    components: tuple[Component, ...] = ()
    adobe_transform: int | None = None
    jfif: bool = False
    density: tuple[int, int] | None = None  # JFIF Xdensity, Ydensity (any units)
    exif: bytes | None = None
    icc: bytes | None = None
    restart_interval: int = 0
    scans: int = 0
    entropy_bytes: int = 0  # entropy-coded data in all scans (restart markers included)
    eoi: int = 0  # offset just after the EOI marker
    segments: list[Segment] = field(default_factory=list)

    @property
    def process(self) -> str:
        return SOF_NAMES.get(self.sof, f"SOF 0x{self.sof:02X}")

    @property
    def samples(self) -> int:
        return len(self.components)

    @property
    def subsampling(self) -> str:
        """``4:4:4``, ``4:2:2``, ``4:2:0``, ``4:4:0``, ``4:1:1``, else the HxV factors."""
        if len(self.components) < 3:
            return "n/a"
        factors = "/".join(f"{c.h}x{c.v}" for c in self.components)
        y, *rest = self.components
        if any(c.h != rest[0].h or c.v != rest[0].v for c in rest):
            return factors
        ratio = (y.h // max(rest[0].h, 1), y.v // max(rest[0].v, 1))
        names = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (1, 2): "4:4:0"}
        return names.get(ratio) or {(4, 1): "4:1:1"}.get(ratio, factors)

    @property
    def colour_space(self) -> str:
        """``GRAY``, ``YCbCr``, ``RGB``, ``CMYK`` or ``YCCK``, decided as libjpeg does.

        One component is grey. Three: an Adobe APP14 transform decides (0 = RGB, 1 = YCbCr);
        without it, component ids ``R``,``G``,``B`` mean RGB, anything else (JFIF, ids 1,2,3)
        YCbCr. Four: Adobe transform 2 is YCCK, otherwise CMYK.
        """
        n = len(self.components)
        if n == 1:
            return "GRAY"
        if n == 3:
            if self.jfif:
                return "YCbCr"
            if self.adobe_transform is not None:
                return "RGB" if self.adobe_transform == 0 else "YCbCr"
            ids = tuple(c.ident for c in self.components)
            return "RGB" if ids == _RGB_IDS else "YCbCr"
        if n == 4:
            return "YCCK" if self.adobe_transform == 2 else "CMYK"
        return f"{n} components"

    @property
    def metadata_segments(self) -> list[Segment]:
        """Segments ``strip_segments`` removes (APPn other than JFIF/ICC/Adobe, and COM)."""
        return [s for s in self.segments if not s.kept]


def looks_like_jpeg(head: bytes) -> bool:
    """True if ``head`` starts with SOI followed by a marker."""
    return len(head) >= 3 and head[0] == 0xFF and head[1] == SOI and head[2] == 0xFF


def parse_jpeg(data: bytes, name: str = "input") -> JpegInfo:
    """Parse the markers of ``data``; CorruptInput/UnsupportedInput name ``name`` and why."""
    n = len(data)
    if not looks_like_jpeg(data[:3]):
        raise UnsupportedInput(f"{name}: not a JPEG file (no SOI marker at the start)")
    info = JpegInfo()
    pos = 2
    icc_chunks: dict[int, bytes] = {}
    while True:
        # Find the next marker; fill bytes (FF FF ...) are allowed before it.
        if pos >= n:
            raise CorruptInput(f"{name}: truncated JPEG (no EOI marker; the file ends at {n})")
        if data[pos] != 0xFF:
            raise CorruptInput(f"{name}: corrupt JPEG (expected a marker at byte {pos})")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise CorruptInput(f"{name}: truncated JPEG (no EOI marker)")
        marker = data[pos]
        start = pos - 1
        pos += 1
        if marker == EOI:
            info.eoi = pos
            break
        if marker == SOI or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue  # stray standalone marker outside a scan: tolerated
        if pos + 2 > n:
            raise CorruptInput(f"{name}: truncated JPEG inside marker 0xFF{marker:02X}")
        length = (data[pos] << 8) | data[pos + 1]
        end = pos + length
        if length < 2 or end > n:
            raise CorruptInput(
                f"{name}: truncated JPEG (segment 0xFF{marker:02X} at byte {start} "
                f"claims {length} bytes, the file ends at {n})"
            )
        seg = Segment(marker, start, end, _keep(marker, data, pos + 2, end))
        info.segments.append(seg)
        body = data[pos + 2 : end] if marker != SOS else b""
        if marker in SOF_NAMES:
            if info.sof:
                raise CorruptInput(f"{name}: more than one frame header (SOF) in the stream")
            _parse_sof(info, marker, body, name)
        elif marker == 0xE0 and body.startswith(b"JFIF\x00"):
            info.jfif = True
            if len(body) >= 12 and info.density is None:
                info.density = ((body[8] << 8) | body[9], (body[10] << 8) | body[11])
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00") and info.exif is None:
            info.exif = bytes(body[6:])
        elif marker == 0xE2 and body.startswith(b"ICC_PROFILE\x00") and len(body) >= 14:
            icc_chunks[body[12]] = bytes(body[14:])
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            info.adobe_transform = body[11]
        elif marker == DRI and len(body) >= 2:
            info.restart_interval = (body[0] << 8) | body[1]
        elif marker == SOS:
            if not info.sof:
                raise CorruptInput(f"{name}: scan (SOS) before the frame header (SOF)")
            info.scans += 1
            found = _MARKER_IN_SCAN.search(data, end)
            if found is None:
                raise CorruptInput(
                    f"{name}: truncated JPEG (scan data runs to the end of the file, no EOI)"
                )
            pos = found.start()
            info.entropy_bytes += pos - end
            continue
        pos = end
    if not info.sof:
        raise CorruptInput(f"{name}: JPEG without a frame header (SOF marker)")
    if info.scans == 0:
        raise CorruptInput(f"{name}: JPEG without scan data (no SOS marker)")
    if icc_chunks:
        info.icc = b"".join(icc_chunks[k] for k in sorted(icc_chunks))
    return info


def _parse_sof(info: JpegInfo, marker: int, body: bytes, name: str) -> None:
    if len(body) < 6:
        raise CorruptInput(f"{name}: frame header (SOF) too short")
    info.sof = marker
    info.precision = body[0]
    info.rows = (body[1] << 8) | body[2]
    info.columns = (body[3] << 8) | body[4]
    count = body[5]
    if len(body) < 6 + 3 * count or count == 0:
        raise CorruptInput(f"{name}: frame header (SOF) declares {count} components, truncated")
    comps = []
    for i in range(count):
        ident, hv, tq = body[6 + 3 * i : 9 + 3 * i]
        comps.append(Component(ident, hv >> 4, hv & 15, tq))
    info.components = tuple(comps)
    if info.rows == 0:
        raise UnsupportedInput(
            f"{name}: the frame header gives 0 rows (height defined by a DNL marker), "
            "which DICOM cannot describe"
        )
    if info.columns == 0:
        raise CorruptInput(f"{name}: the frame header gives 0 columns")


def _keep(marker: int, data: bytes, body_start: int, end: int) -> bool:
    """Whether a segment survives ``strip_segments`` (only APPn/COM can be dropped)."""
    if marker == COM:
        return False
    if not 0xE0 <= marker <= 0xEF:
        return True
    head = bytes(data[body_start : min(end, body_start + 12)])
    if marker == 0xE0:
        return head.startswith(b"JFIF\x00") or head.startswith(b"JFXX\x00")
    if marker == 0xE2:
        return head.startswith(b"ICC_PROFILE\x00")
    if marker == 0xEE:
        return head.startswith(b"Adobe")
    return False


def strip_segments(data: bytes, info: JpegInfo) -> bytes:
    """``data`` without metadata APPn/COM segments and without bytes after EOI.

    Everything else (SOI, tables, frame header, scans with their entropy-coded data, EOI)
    is copied byte for byte, in order.
    """
    drop = [s for s in info.segments if not s.kept]
    if not drop and info.eoi == len(data):
        return data
    return _without(data, drop, info.eoi)


def _without(data: bytes, drop: list[Segment], eoi: int) -> bytes:
    parts: list[bytes | memoryview] = []
    pos = 0
    view = memoryview(data)
    for seg in drop:
        parts.append(view[pos : seg.start])
        pos = seg.end
    parts.append(view[pos:eoi])
    return b"".join(parts)


def coded_image(data: bytes, info: JpegInfo) -> bytes:
    """The stream without any APPn/COM segment and without bytes after EOI.

    Tables, frame header, scan headers and entropy-coded data, in order: what must stay
    byte-identical between a source JPEG and the fragment written into DICOM.
    """
    drop = [s for s in info.segments if 0xE0 <= s.marker <= 0xEF or s.marker == COM]
    return _without(data, drop, info.eoi)
