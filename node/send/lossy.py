"""Was this pixel data compressed lossily? The answer decoding must not lose.

A file decoded to send it uncompressed keeps its history in (0028,2110)
LossyImageCompression: once lossy, always lossy (PS3.3 C.7.6.1.1.5). When the element is
missing, the transfer syntax may answer (JPEG baseline/extended, MPEG and HEVC are always
lossy), and for the syntaxes that may be either the codestream does:

* JPEG-LS (1.2.840.10008.1.2.4.80/.81): the NEAR parameter of the scan header (ISO/IEC
  14495-1 C.2.3); above 0 the stream is near-lossless, i.e. lossy (``ISO_14495_1``), as
  DCMTK's ``dcmdjpls`` records it;
* JPEG 2000 and HTJ2K: the wavelet of the COD marker (ISO/IEC 15444-1 A.6.1, Table A.20);
  the 9-7 irreversible filter is lossy (``ISO_15444_1``, ``ISO_15444_15``). A 5-3
  (reversible) stream may still have been truncated by a rate limit, which the stream does
  not say: it is left as it was.

Only the encapsulated fragments are read, never decoded.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: Transfer syntaxes that are always lossy -> (0028,2114) LossyImageCompressionMethod
#: (PS3.3 C.7.6.1.1.5.1).
ALWAYS_LOSSY: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.100": "ISO_13818_2",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.101": "ISO_13818_2",  # MPEG2 MP@HL
    "1.2.840.10008.1.2.4.102": "ISO_14496_10",  # MPEG-4 AVC/H.264
    "1.2.840.10008.1.2.4.103": "ISO_14496_10",
    "1.2.840.10008.1.2.4.104": "ISO_14496_10",
    "1.2.840.10008.1.2.4.105": "ISO_14496_10",
    "1.2.840.10008.1.2.4.106": "ISO_14496_10",
    "1.2.840.10008.1.2.4.107": "ISO_23008_2",  # HEVC/H.265
    "1.2.840.10008.1.2.4.108": "ISO_23008_2",
}
JPEG_LS = frozenset(("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"))
JPEG_2000 = {
    "1.2.840.10008.1.2.4.90": "ISO_15444_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.201": "ISO_15444_15",  # HTJ2K
    "1.2.840.10008.1.2.4.202": "ISO_15444_15",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}
_SHORT = struct.Struct(">H")
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "


def lossy_method(ds: Dataset, transfer_syntax: str) -> str | None:
    """The (0028,2114) method when ``ds``'s pixel data (in ``transfer_syntax``) is lossy."""
    if transfer_syntax in ALWAYS_LOSSY:
        return ALWAYS_LOSSY[transfer_syntax]
    if transfer_syntax not in JPEG_LS and transfer_syntax not in JPEG_2000:
        return None
    probe = _jpeg_ls_near if transfer_syntax in JPEG_LS else _j2k_irreversible
    try:
        lossy = any(probe(fragment) for fragment in _fragments(ds))
    except Exception as exc:  # a damaged stream: its decoder will say so
        log.debug("cannot read the codestream headers: %s", exc)
        return None
    if not lossy:
        return None
    return "ISO_14495_1" if transfer_syntax in JPEG_LS else JPEG_2000[transfer_syntax]


def _fragments(ds: Dataset) -> Iterator[bytes]:
    from pydicom.encaps import generate_fragments

    value = ds.get("PixelData")
    data = value if isinstance(value, bytes | bytearray) else getattr(value, "value", None)
    if not data:
        return
    yield from generate_fragments(bytes(data))


def _jpeg_ls_near(stream: bytes) -> bool:
    """True when the JPEG-LS stream's first scan has NEAR > 0 (near-lossless)."""
    if stream[:2] != b"\xff\xd8":
        return False
    pos = 2
    while pos + 4 <= len(stream):
        marker = stream[pos : pos + 2]
        if marker[0] != 0xFF:
            return False
        (length,) = _SHORT.unpack_from(stream, pos + 2)
        if marker == b"\xff\xda":  # SOS: Ns, Ns x (Ci, Tmi), NEAR, ILV, Al/Ah
            ns = stream[pos + 4]
            return stream[pos + 5 + 2 * ns] > 0
        pos += 2 + length
    return False


def _j2k_irreversible(stream: bytes) -> bool:
    """True when the JPEG 2000 main header's COD names the 9-7 irreversible wavelet."""
    pos = 0
    if stream.startswith(_JP2_SIGNATURE):  # a JP2 file: the codestream is in the jp2c box
        pos = 12
        while pos + 8 <= len(stream):
            size = int.from_bytes(stream[pos : pos + 4], "big")
            if stream[pos + 4 : pos + 8] == b"jp2c":
                pos += 8
                break
            if size < 8:
                return False
            pos += size
    if stream[pos : pos + 2] != b"\xff\x4f":  # SOC
        return False
    pos += 2
    while pos + 4 <= len(stream):
        marker = stream[pos : pos + 2]
        if marker == b"\xff\x90" or marker[0] != 0xFF:  # SOT: the main header is over
            return False
        (length,) = _SHORT.unpack_from(stream, pos + 2)
        if marker == b"\xff\x52":  # COD: Scod, SGcod (4), levels, xcb, ycb, style, wavelet
            return stream[pos + 13] == 0
        pos += 2 + length
    return False
