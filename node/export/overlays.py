"""Overlay planes (PS3.3 C.9.2) of grayscale images, found and placed as dcmj2pnm shows them.

An overlay plane is a group 60xx (6000, 6002 ... 601E) with Overlay Rows/Columns (0010/0011),
Overlay Type (0040), Overlay Origin (0050, the 1-based row and column of its top left pixel,
possibly outside the image) and its bits, either

* in (60xx,3000) Overlay Data, one bit per pixel (the current form; unpacked by pydicom), or
* *embedded* (retired in 2004, still found in older MR/CT archives): no Overlay Data, the bit
  (60xx,0102) Overlay Bit Position of each Pixel Data word, above the stored bits. dcmimgle
  shows these too; they are taken from the decoded whole words of each frame.

Graphics overlays (type G) are returned; ROI overlays (type R) are not (not drawn). On a
multi-frame image an overlay with Overlay Data and with (60xx,0015) Number of Frames in
Overlay or (60xx,0051) Image Frame Origin covers the frames origin .. origin + count - 1 (a
one-frame overlay too); with neither, a one-frame overlay covers every frame. An embedded
overlay lives in each frame's own words (the first Number of Frames in Overlay frames if
given, else all).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.export import decode
from node.export.decode import PixelInfo

log = logging.getLogger(__name__)

ROWS, COLUMNS, FRAMES, TYPE, ORIGIN, FRAME_ORIGIN, BIT_POSITION, DATA = (
    0x0010,
    0x0011,
    0x0015,
    0x0040,
    0x0050,
    0x0051,
    0x0102,
    0x3000,
)


@dataclass(frozen=True)
class Overlay:
    """One graphics overlay plane: where it goes and which frames it covers."""

    group: int
    row0: int  # 0-based top row in the image (may be negative)
    col0: int
    stack: np.ndarray | None  # (frames, rows, cols) from Overlay Data; None if embedded
    first: int  # 0-based frame of stack[0]
    frames: int | None  # frames covered from ``first``; None: every frame (one plane)
    bit: int = -1  # embedded: the bit of each Pixel Data word
    rows: int = 0
    columns: int = 0

    def plane(self, ds: Dataset, info: PixelInfo, index: int) -> np.ndarray | None:
        """The 0/1 plane for frame ``index`` (0-based), or None if it does not cover it."""
        if self.frames is not None and not 0 <= index - self.first < self.frames:
            return None
        if self.stack is not None:
            return self.stack[0 if self.frames is None else index - self.first]
        # dcmimgle reads the plane as a bit stream through the frame's words (Overlay
        # Rows x Columns of them, usually the image's own size) and, without (60xx,0015),
        # shows the first frame's plane on every frame
        frame = index if self.frames is not None else 0
        words = decode.whole_words(ds, info, frame).ravel()[: self.rows * self.columns]
        if words.size < self.rows * self.columns:
            return None
        return ((words >> self.bit) & 1).astype(np.uint8).reshape(self.rows, self.columns)

    def burn(self, pixels: np.ndarray, plane: np.ndarray, value: int) -> None:
        """Set the pixels under the plane's 1 bits to ``value`` (in place)."""
        rows, cols = pixels.shape[:2]
        top, left = max(self.row0, 0), max(self.col0, 0)
        sub = plane[
            top - self.row0 : top - self.row0 + rows - top,
            left - self.col0 : left - self.col0 + cols - left,
        ]
        region = pixels[top : top + sub.shape[0], left : left + sub.shape[1]]
        region[sub.astype(bool)] = value


def _value(ds: Dataset, group: int, element: int) -> object:
    try:  # values are converted at first access: IS 'inf' raises OverflowError there
        elem = ds.get((group << 16) | element)
        return None if elem is None or elem.value in (None, "") else elem.value
    except decode.MALFORMED as exc:
        raise ValueError(f"({group:04X},{element:04X}) cannot be read: {exc}") from None


def _number(value: object) -> int:
    return int(value)  # type: ignore[call-overload]


def graphics(ds: Dataset, info: PixelInfo, path: Path) -> list[Overlay]:
    """The graphics overlay planes of ``ds`` that can be shown (others are logged)."""
    # Dataset.keys(), not the Dataset: iterating it would convert every element
    tags = ds.keys()  # noqa: SIM118
    groups = sorted(
        {t >> 16 for t in tags if 0x6000 <= t >> 16 <= 0x601E and t & 0xFFFF in (ROWS, DATA)}
    )
    out = []
    for group in groups:
        try:
            if str(_value(ds, group, TYPE) or "G").strip().upper() != "G":
                continue
            row0, col0 = _origin(_value(ds, group, ORIGIN), group)
            count, first = _value(ds, group, FRAMES), _value(ds, group, FRAME_ORIGIN)
            overlay: Overlay | None
            if (group << 16) | DATA in ds:
                overlay = _with_data(ds, group, row0, col0, count, first)
            else:
                overlay = _embedded(ds, info, group, row0, col0, count, path)
        except decode.MALFORMED as exc:  # IS 'inf' in (60xx,0015) raises OverflowError
            log.warning("%s: overlay group %04X not shown: %s", path, group, exc)
            continue
        if overlay is not None:
            out.append(overlay)
    return out


def _origin(value: object, group: int) -> tuple[int, int]:
    """(60xx,0050) Overlay Origin (1-based row and column) as 0-based; absent: (0, 0)."""
    if value is None:
        return 0, 0
    numbers = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    if len(numbers) != 2:
        raise ValueError(
            f"({group:04X},0050) OverlayOrigin is {value!r}; it must be two numbers, the "
            "row and column of the overlay's top left pixel (1\\1 for the image's)"
        )
    return _number(numbers[0]) - 1, _number(numbers[1]) - 1


def _with_data(
    ds: Dataset, group: int, row0: int, col0: int, count: object, first: object
) -> Overlay:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        mask = ds.overlay_array(group)
    stack = mask if mask.ndim == 3 else mask[np.newaxis]
    bound = mask.ndim == 3 or count is not None or first is not None
    start = _number(first) - 1 if first is not None else 0
    return Overlay(group, row0, col0, stack, start, len(stack) if bound else None)


def _embedded(
    ds: Dataset, info: PixelInfo, group: int, row0: int, col0: int, count: object, path: Path
) -> Overlay | None:
    bit, rows, cols = (_value(ds, group, e) for e in (BIT_POSITION, ROWS, COLUMNS))
    where = f"{path}: overlay group {group:04X} has no ({group:04X},3000) OverlayData"
    if bit is None or not rows or not cols or info.bits_allocated not in (8, 16):
        log.warning(
            "%s and is not an embedded overlay (it needs (%04X,0102) OverlayBitPosition, "
            "OverlayRows/Columns and (0028,0100) BitsAllocated 8 or 16): not shown",
            where,
            group,
        )
        return None
    position = _number(bit)
    if not 0 <= position < info.bits_allocated:
        log.warning(
            "%s: (%04X,0102) OverlayBitPosition %d is outside (0028,0100) BitsAllocated %d: "
            "not shown",
            where,
            group,
            position,
            info.bits_allocated,
        )
        return None
    stored_low = info.high_bit + 1 - info.bits_stored
    if stored_low <= position <= info.high_bit:
        log.warning(
            "%s: (%04X,0102) OverlayBitPosition %d lies within the stored pixel value "
            "(bits %d..%d; (0028,0101) BitsStored, (0028,0102) HighBit): not shown, as DCMTK",
            where,
            group,
            position,
            stored_low,
            info.high_bit,
        )
        return None
    frames = _number(count) if count is not None else None
    return Overlay(group, row0, col0, None, 0, frames, position, _number(rows), _number(cols))
